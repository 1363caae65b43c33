"""`make proof`: every guarantee the README makes has a test that goes red when the guarantee breaks.

Each mutation in tests/mutations.py breaks one guarantee with one small patch to `semsearch/` or `sql/`.
For each, this copies the working tree to a scratch folder once, applies that patch alone, runs only the
tests that claim the guarantee (with the scratch copy of semsearch first on the path, for subprocesses
too) and expects them to fail. It prints a table (guarantee, mutation, test, red or green) and exits 1
unless every mutation turned its tests red.

    python tests/proof.py [--only NAME ...] [--list]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from mutations import MUTATIONS, Mutation  # noqa: E402  (beside this file, not a package import)

TEST_TIMEOUT_SECONDS = 600


def scratch_copy() -> Path:
    """The working tree as git sees it (tracked files and untracked ones it does not ignore)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    root = Path(tempfile.mkdtemp(prefix="semsearch-proof-"))
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def check(mutation: Mutation) -> None:
    """A mutation must change exactly one place, or it proves nothing."""
    text = (REPO / mutation.path).read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation {mutation.name}: {mutation.path} holds its text {count} times, not once")
    for test in mutation.tests:
        if not (REPO / test.split("::")[0]).is_file():
            raise SystemExit(f"mutation {mutation.name}: no test file {test}")


def pytest(root: Path, tests: list[str]) -> subprocess.CompletedProcess:
    """The tests, run in the scratch copy with its semsearch first on the path (subprocesses included)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           f"--timeout={TEST_TIMEOUT_SECONDS}", *tests], cwd=root, env=env, capture_output=True,
                          text=True)


def run(mutation: Mutation, root: Path) -> tuple[str, float]:
    """'red' when the tests fail under the mutation, 'green' when they pass, else what went wrong."""
    target = root / mutation.path
    original = target.read_text()
    target.write_text(original.replace(mutation.old, mutation.new))
    started = time.monotonic()
    try:
        out = pytest(root, list(mutation.tests))
    finally:
        target.write_text(original)
    elapsed = time.monotonic() - started
    if out.returncode == 1:
        return "red", elapsed
    if out.returncode == 0:
        return "green", elapsed
    return f"error (pytest exit {out.returncode}): {out.stdout.strip().splitlines()[-1:]}", elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        raise SystemExit(f"unknown mutation among {args.only}; --list shows them")
    for mutation in chosen:
        check(mutation)
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.guarantee}")
        return 0
    root = scratch_copy()
    results = []
    try:
        # Unmutated, every test must pass: a red under a mutation then means the mutation did it.
        baseline = pytest(root, sorted({t for m in chosen for t in m.tests}))
        if baseline.returncode != 0:
            print(baseline.stdout[-3000:], baseline.stderr[-2000:])
            raise SystemExit("the tests fail without any mutation: fix them first")
        print("baseline: every test passes unmutated", flush=True)
        for mutation in chosen:
            outcome, seconds = run(mutation, root)
            results.append((mutation, outcome, seconds))
            print(f"{outcome:>5}  {seconds:6.1f}s  {mutation.name}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    rows = [("guarantee", "mutation", "test", "result")] + [
        (m.guarantee, f"{m.name}: {m.path}", " ".join(t.split("/")[-1] for t in m.tests), outcome)
        for m, outcome, _ in results]
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(3)]
    for row in rows:
        print("  ".join(cell[:w].ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    survived = [m.name for m, outcome, _ in results if outcome != "red"]
    total = sum(s for *_, s in results)
    print(f"\n{len(results) - len(survived)} of {len(results)} mutations turned their tests red in {total:.0f}s")
    if survived:
        print("not red: " + ", ".join(survived))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
