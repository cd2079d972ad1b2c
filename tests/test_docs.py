"""Every Python code block in README.md and docs/*.md runs (on tiny or built-in models)."""

from __future__ import annotations

from pathlib import Path

import pytest

mktestdocs = pytest.importorskip("mktestdocs")

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_code_blocks_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    mktestdocs.check_md_file(page, memory=True)


def test_site_builds_strictly(tmp_path):
    """The mkdocs site (API pages from the docstrings included) builds without a warning."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                          "-d", str(tmp_path / "site")], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_the_attention_page_runs_without_a_no_signal_warning(monkeypatch, tmp_path):
    """Its heads example probes a label the tiny model can see, with enough rows and folds."""
    import warnings

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="no probe beats the dummy")
        mktestdocs.check_md_file(REPO / "docs" / "attention.md", memory=True)
