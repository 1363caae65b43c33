"""The README's example runs as written."""
import re
from pathlib import Path


def test_readme_example_runs(db_url, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = re.search(r"## Use it\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.setenv("SEMSEARCH_DATABASE_URL", db_url)
    exec(compile(example, "README.md", "exec"), {})
    assert "argparse" in capsys.readouterr().out
