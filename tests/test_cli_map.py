"""``embetter-plug map`` on a tiny saved model: the real command in a subprocess, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from map_chromium import read_page

import embetter_plug.cli.map as cli_map
from embetter_plug.cli import main

pytest.importorskip("plotly")
pytestmark = pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from embetter_plug import load_builtin_dataset
    from embetter_plug.testing import save_tiny_model

    root = tmp_path_factory.mktemp("cli_map")
    model = save_tiny_model("gpt2", root / "gpt2")
    df = load_builtin_dataset("train").iloc[:40].reset_index(drop=True)
    df["label"] = np.where(df["label"] == 1, "new dataset", "other")
    df.loc[df.index[::2], "label"] = ""  # half the rows unlabelled
    df = df.rename(columns={"text": "sentence"})
    csv = root / "texts.csv"
    df.to_csv(csv, index=False)
    return {"root": root, "model": str(model), "csv": str(csv), "df": df}


def test_map_command_in_a_subprocess(setup, tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    from embetter_plug import FeedForwardTuner, LayerPooler, TransformerActivationEncoder

    out = tmp_path / "map.html"
    cmd = [sys.executable, "-m", "embetter_plug.cli", "map", "--data", setup["csv"],
           "--text-col", "sentence", "--model", setup["model"], "--layers", "0,2",
           "--tuner", "feedforward", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "20 labelled" in run.stdout and "colour by label, prediction, uncertainty" in run.stdout
    figure, data = read_page(out)
    df = setup["df"]
    assert data["texts"] == df["sentence"].tolist()
    assert data["labels"] == [v or None for v in df["label"]]
    # the same steps by hand: encoder, pooled layers, tuner on the labelled rows, classifier, PCA
    texts = df["sentence"].tolist()
    X = LayerPooler().fit_transform(
        TransformerActivationEncoder(setup["model"], layers=[0, 2]).fit(texts).transform(texts))
    lab = df["label"].to_numpy()
    train = np.flatnonzero(lab != "")
    Z = FeedForwardTuner(random_state=0).fit(X[train], lab[train]).transform(X)
    proba = LogisticRegression(max_iter=1000).fit(Z[train], lab[train]).predict_proba(Z)
    xy = PCA(2, random_state=0).fit_transform(Z)
    scale = np.abs(xy).max()
    for trace in figure["data"]:
        rows = np.asarray(trace["customdata"], dtype=int)
        np.testing.assert_allclose(trace["x"] / scale, xy[rows, 0] / scale, atol=2e-3)
        np.testing.assert_allclose(trace["y"] / scale, xy[rows, 1] / scale, atol=2e-3)
    np.testing.assert_allclose(data["confidence"], proba.max(axis=1), atol=2e-3)
    assert any((tmp_path / "cache").iterdir())  # the activations went through the cache


def test_map_without_labels(setup, tmp_path, capsys):
    csv = tmp_path / "plain.csv"
    setup["df"][["sentence"]].to_csv(csv, index=False)
    out = tmp_path / "m.html"
    assert main(["map", "--data", str(csv), "--text-col", "sentence", "--model", setup["model"],
                 "--out", str(out)]) == 0
    assert "(0 labelled)" in capsys.readouterr().out
    figure, data = read_page(out)
    assert [t["name"] for t in figure["data"]] == ["unlabelled", "search matches"]
    assert data["labels"] == [None] * 40 and data["predictions"] is None


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the command built an encoder before checking its input")

    monkeypatch.setattr(cli_map, "encoder_from_args", refuse)


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/missing/map.html"], "the folder .*missing' does not exist"),
    (["--out", "{tmp}"], "is a folder; give an HTML file name"),
    (["--out", "{tmp}/exists.html"], "already exists; pass --overwrite"),
    (["--label-col", "target"], "--label-col 'target' is not a column"),
    (["--text-col", "text"], "--text-col 'text' is not a column"),
    (["--tuner", "contrastive", "--data", "{tmp}/one_class.csv"], "need at least 2 classes"),
])
def test_errors_before_the_model_loads(setup, tmp_path, capsys, no_model, args, message):
    import re

    (tmp_path / "exists.html").write_text("x")
    one = setup["df"].assign(label=lambda d: np.where(d["label"] == "", "", "other"))
    one.to_csv(tmp_path / "one_class.csv", index=False)
    base = {"--data": setup["csv"], "--text-col": "sentence", "--out": str(tmp_path / "new.html")}
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value
    argv = ["map", "--model", setup["model"]] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("embetter-plug map: error: ") and re.search(message, err), err
    assert not (tmp_path / "new.html").exists()


def test_missing_packages_are_named_before_the_model_loads(setup, tmp_path, capsys, no_model,
                                                           monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "umap", None)
    assert main(["map", "--data", setup["csv"], "--text-col", "sentence", "--projection", "umap",
                 "--out", str(tmp_path / "m.html")]) == 2
    assert "pip install umap-learn" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "plotly", None)
    assert main(["map", "--data", setup["csv"], "--text-col", "sentence",
                 "--out", str(tmp_path / "m.html")]) == 2
    assert "pip install 'embetter_plug[map]'" in capsys.readouterr().err


def test_empty_text_cell_names_the_line(setup, tmp_path, capsys, no_model):
    df = setup["df"].copy()
    df.loc[3, "sentence"] = " "
    df.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["map", "--data", str(tmp_path / "bad.csv"), "--text-col", "sentence",
                 "--out", str(tmp_path / "m.html")]) == 2
    assert "line(s) [5]" in capsys.readouterr().err


def test_help_lists_map():
    from embetter_plug.cli import build_parser

    assert "map" in build_parser().format_help()
