"""The demo leaves a fresh clone clean: every plot, log, steps file, cache and checkpoint of
`python scripts/run_demo.py` goes where git ignores it, so `git status` is empty afterwards."""
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]


def git(repo, *args) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def clone(tmp_path):
    """A fresh git repository holding the files of this checkout that a commit would hold (tracked
    or new, never ignored), as they are now; the real checkout is only read."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the project")
    files = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    repo = tmp_path / "clone"
    for name in filter(None, files):
        if (ROOT / name).is_file():          # a tracked file deleted in the checkout is left out
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fresh clone")
    assert git(repo, "status", "--porcelain") == ""
    return repo


def test_the_demo_leaves_git_status_empty(clone):
    demo = subprocess.run([sys.executable, "scripts/run_demo.py", "--model", "tiny", "--max_steps", "2",
                           "--tracker", "none", "--compile", "off", "--n_eval", "2"],
                          cwd=clone, capture_output=True, text=True)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert (clone / "out" / "report.md").is_file()       # it did run to the end, writing under out/
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""
