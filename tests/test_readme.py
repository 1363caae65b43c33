"""The README's example runs as written."""
import re
from pathlib import Path


def test_readme_example_runs(db_url, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = re.search(r"## Use it\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.setenv("SEMSEARCH_DATABASE_URL", db_url)
    exec(compile(example, "README.md", "exec"), {})
    assert "argparse" in capsys.readouterr().out


def test_readme_ranking_example_runs(db_url, monkeypatch, capsys):
    """Filters inside the arms, weights and arm scores, as the README shows them (its own asserts)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = re.search(r"### Ranking, fusion and filters\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.setenv("SEMSEARCH_DATABASE_URL", db_url)
    exec(compile(example, "README.md", "exec"), {})
    assert len(capsys.readouterr().out.splitlines()) == 3
