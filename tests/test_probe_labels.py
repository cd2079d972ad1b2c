"""Labels a new user brings: string labels with a rare or single class, missing values, many
integers. Each gives a clear error (or the documented task) in Python and on the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from embetter_plug import probe_layers
from embetter_plug.probe.metrics import detect_task

X = np.random.default_rng(0).normal(size=(20, 2, 1, 4))


@pytest.mark.parametrize("y, message", [
    (pd.Series(["a"] * 17 + ["b"] * 3), "cv=5 needs at least 5 members of every class, but class "
                                        "'b' has 3; use a smaller cv, or drop"),
    (pd.Series(["a"] * 20), "y has a single class ('a')"),
    (pd.Series(["a"] * 10 + ["b"] * 9 + [np.nan]), "y has 1 missing (NaN or None) value(s) at "
                                                   "position(s) [19]"),
    (pd.Series(["a"] * 10 + [None] + ["b"] * 9), "position(s) [10]"),
    (pd.Series(["a"] * 10 + ["b"] * 9 + [pd.NA], dtype=object), "position(s) [19]"),
    (np.r_[np.zeros(17), np.ones(3)].astype(int), "(or task='regression' for numbers)"),
])
def test_string_labels_give_clear_errors(y, message):
    with pytest.raises(ValueError) as exc:
        probe_layers(X, y, cv=5)
    assert message in str(exc.value)


def test_auto_task_with_many_integers():
    y = np.arange(120) % 60
    assert detect_task(y, "auto")[0] == "classification"  # the documented default
    task, yy = detect_task(y, "auto", max_classes=20)
    assert task == "regression" and yy.dtype == float
    assert detect_task(np.arange(120) % 5, "auto", max_classes=20)[0] == "classification"
    assert detect_task(y.astype(str), "auto", max_classes=20)[0] == "classification"


def _cli(*args, cwd=None, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "embetter_plug.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "labels.csv"
    pd.DataFrame({"text": [f"text number {i}" for i in range(120)],
                  "age": np.arange(120) % 60,
                  "rare": ["x"] * 117 + ["y"] * 3,
                  "one": ["z"] * 120}).to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("extra, message", [
    (["--label-col", "rare"], "--cv 5 needs at least 5 members of every class, but class 'y' has 3 "
                              "(at"),
    (["--label-col", "rare", "--cv", "100"], "--cv 100 needs at least 100 members of every "
                                              "class, but class 'y' has 3"),
    (["--label-col", "one"], "--label-col 'one' holds a single class ('z')"),
    (["--label-col", "age", "--task", "classification"], "use a smaller --cv (or --task regression "
                                                         "for numbers)"),
])
def test_cli_label_errors_are_one_line(csv, extra, message):
    """In a subprocess: one error line, exit status 2, no traceback, before any model loads."""
    run = _cli("probe", "--data", csv, "--model", "/nonexistent/model", *extra)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_cli_auto_task_follows_its_help(csv, tmp_path):
    """60 distinct integers are a regression target under --task auto, as the help says."""
    from embetter_plug.testing import save_tiny_model

    model = save_tiny_model("gpt2", tmp_path / "gpt2")
    run = _cli("probe", "--data", csv, "--label-col", "age", "--model", str(model), "--layers", "1",
               "--parts", "resid_post", "--cv", "3", "--quiet", "--out", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert "holds 60 distinct numbers, probed as regression" in run.stdout
    assert "r2" in run.stdout and "accuracy" not in run.stdout
    assert "%|" not in run.stderr  # --quiet: no progress bars


def test_cli_fine_grained_trec_labels(tmp_path):
    """The real TREC fine labels: 50 string classes, some with fewer rows than the folds."""
    from conftest import shared_csv

    trec = shared_csv("trec")
    run = _cli("probe", "--data", str(trec), "--label-col", "label_fine", "--max-samples", "300",
               cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert re.search(r"--cv 5 needs at least 5 members of every class, but class '[A-Z]+:\w+' "
                     r"has \d", run.stderr)
    assert "use a smaller --cv, or drop or merge those classes" in run.stderr
