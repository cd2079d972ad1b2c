"""``embetter-plug probe`` on tiny saved models and a small CSV, in-process and as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import joblib
import numpy as np

from embetter_plug.extraction.extractor import ActivationExtractor
import pandas as pd
import pytest
from sklearn.base import clone

from embetter_plug import ProbeResults, TransformerActivationEncoder, probe_layers
from embetter_plug.cli import main

# `probe` writes a run folder under the current folder unless --out is given: run in tmp_path.
pytestmark = [pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning"),
              pytest.mark.usefixtures("in_tmp_path")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from embetter_plug import load_builtin_dataset
    from embetter_plug.testing import save_tiny_model

    root = tmp_path_factory.mktemp("cli_probe")
    gpt2 = save_tiny_model("gpt2", root / "gpt2")
    bert = save_tiny_model("bert", root / "bert")
    df = load_builtin_dataset("train")
    df = pd.concat([df[df.label == 1].iloc[:30], df[df.label == 0].iloc[:30]])
    df = df.rename(columns={"text": "sentence", "label": "target"})
    csv = root / "small.csv"
    df.to_csv(csv, index=False)
    return {"root": root, "gpt2": str(gpt2), "bert": str(bert), "csv": str(csv), "df": df}


def test_probe_writes_table_files_and_best_pipeline(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["probe", "--data", setup["csv"], "--text-col", "sentence", "--label-col", "target",
            "--model", setup["gpt2"], "--model", setup["bert"], "--token-pooling", "mean",
            "--token-pooling", "0.5", "--layers", "0,2", "--cv", "3", "--batch-size", "16",
            "--max-length", "64", "--out", str(out)]
    runs = []
    original = ActivationExtractor._batches  # what extract and iter_batches both run

    def counted(self, texts, **kw):
        runs.append(len(texts))
        return original(self, texts, **kw)

    monkeypatch.setattr(ActivationExtractor, "_batches", counted)
    assert main(args) == 0
    monkeypatch.undo()
    # one pass over the texts per model; the saved pipeline reuses the activations
    assert runs == [len(setup["df"])] * 2
    text = capsys.readouterr().out
    for col in ("accuracy", "f1", "roc_auc", "best"):
        assert col in text
    res = ProbeResults.read(out / "results.csv")
    assert res.context == ["dataset", "model", "pooling"]
    assert set(res.frame_["model"]) == {"gpt2", "bert"}
    assert set(res.frame_["pooling"]) == {"mean", "pos0.5", "-"}
    assert set(res.frame_["part"]) == {"resid_post", "attn_out", "mlp_out", "dummy"}
    assert set(res.frame_["layer"].dropna()) == {0, 2}
    # the printed best line and the table mark agree with the file
    best = res.best()
    assert f"best: layer {best['layer']} {best['part']}" in text
    assert f"{best['mean']:.3f} ± {best['std']:.3f}" in text
    # scores of one model equal probe_layers on that model's own activations
    df = setup["df"]
    enc = TransformerActivationEncoder(setup["bert"], layers=[0, 2],
                                       parts=["resid_post", "attn_out", "mlp_out"],
                                       token_pooling=["mean", 0.5], batch_size=16, max_length=64)
    X = enc.fit_transform(df["sentence"].tolist())
    ref = probe_layers(X, df["target"].to_numpy(), cv=3, layout=enc.layout_,
                       layers=[2], parts=["mlp_out@mean"], dummy=False, scoring="accuracy",
                       nested=False)
    f = res.frame_
    got = f[(f.model == "bert") & (f.pooling == "mean") & (f.layer == 2) & (f.part == "mlp_out")
            & (f.metric == "accuracy")]["score"].to_numpy()
    np.testing.assert_allclose(got, ref.frame_["score"].to_numpy(), atol=1e-6)
    # the best pipeline: refitted on all rows, reads texts, predicts like its parts
    name = "best_pipeline" if res.verdict()["beats_chance"] else "best_pipeline_no_signal"
    pipe = joblib.load(out / f"{name}.joblib")
    enc_best = pipe.named_steps["encoder"]
    assert enc_best.layers == [best["layer"]] and enc_best.parts == [best["part"]]
    pred = pipe.predict(df["sentence"].tolist())
    Xb = enc_best.transform(df["sentence"].tolist()).reshape(len(df), -1)
    np.testing.assert_array_equal(pred, pipe.named_steps["probe"].predict(Xb))
    refit = clone(pipe.named_steps["probe"]).fit(Xb, df["target"])  # refitted on all rows
    np.testing.assert_allclose(refit.predict_proba(Xb),
                               pipe.predict_proba(df["sentence"].tolist()), atol=1e-4)
    assert set(pred) <= {0, 1}
    assert (out / "probe.png").stat().st_size > 10_000
    page = (out / "report.html").read_text()
    assert '"model": "bert"' in page and '"pooling": "pos0.5"' in page


def test_regression_target(setup, tmp_path, capsys):
    df = setup["df"].copy()
    df["score"] = np.linspace(0, 1, len(df)) ** 2 + 0.01
    csv = tmp_path / "reg.csv"
    df.to_csv(csv, index=False)
    assert main(["probe", "--data", str(csv), "--text-col", "sentence", "--label-col", "score",
                 "--model", setup["gpt2"], "--layers", "1", "--parts", "resid_post",
                 "--cv", "3"]) == 0
    text = capsys.readouterr().out
    assert "mse" in text and "r2" in text and "spearman" in text and "accuracy" not in text


@pytest.mark.parametrize("extra, message", [
    (["--label-col", "nope"], "--label-col 'nope' is not a column"),
    (["--text-col", "nope"], "--text-col 'nope' is not a column"),
    (["--layers", "7"], "layer 7 is out of range"),
    (["--parts", "nonsense"], "unknown part 'nonsense'"),
    (["--task", "regression", "--label-col", "word"], "needs a numeric target"),
])
def test_errors_are_clear(setup, tmp_path, capsys, extra, message):
    df = setup["df"].assign(word=lambda d: np.where(d["target"] == 1, "yes", "no"))
    csv = tmp_path / "e.csv"
    df.to_csv(csv, index=False)
    args = ["probe", "--data", str(csv), "--text-col", "sentence", "--label-col", "target",
            "--model", setup["gpt2"], "--cv", "2", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_bad_cv_fails_before_extraction(setup, monkeypatch, capsys):
    import embetter_plug.cli.probe as cli_probe

    def no_extraction(*args, **kwargs):
        raise AssertionError("activations were extracted before --cv was checked")

    monkeypatch.setattr(cli_probe, "encoder_from_args", no_extraction)
    base = ["probe", "--data", setup["csv"], "--text-col", "sentence", "--label-col", "target",
            "--model", setup["gpt2"]]
    with pytest.raises(SystemExit) as exc:  # argparse: at least two folds
        main([*base, "--cv", "1"])
    assert exc.value.code == 2
    assert "argument --cv: must be an integer >= 2, got 1" in capsys.readouterr().err
    # 30 rows of each label cannot fill 31 stratified folds
    assert main([*base, "--cv", "31"]) == 2
    err = capsys.readouterr().err
    assert "--cv 31 needs at least 31 members of every class, but class 0 has 30, 1 has 30" in err


def test_single_class_and_missing_file(setup, tmp_path, capsys):
    df = setup["df"].assign(target=1)
    csv = tmp_path / "one.csv"
    df.to_csv(csv, index=False)
    assert main(["probe", "--data", str(csv), "--text-col", "sentence", "--label-col", "target",
                 "--model", setup["gpt2"]]) == 2
    assert "single class" in capsys.readouterr().err
    assert main(["probe", "--data", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_subprocess(setup, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "embetter_plug.cli", "probe", "--data", setup["csv"],
         "--text-col", "sentence", "--label-col", "target", "--model", setup["gpt2"],
         "--layers", "-1", "--parts", "mlp,attn", "--cv", "2", "--max-samples", "40",
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mlp_out" in out.stdout and "attn_out" in out.stdout and "*" in out.stdout
    res = ProbeResults.read(tmp_path / "o" / "results.csv")
    assert res.frame_["fold"].max() == 1
    assert set(res.frame_["layer"].dropna()) == {2}


@pytest.mark.slow
def test_defaults_use_builtin_model_and_data(minilm_path, tmp_path, capsys):
    assert main(["probe", "--max-samples", "150", "--layers", "0,-1", "--cv", "2"]) == 0
    text = capsys.readouterr().out
    assert "dataset: new_dataset; model: all-MiniLM-L6-v2" in text
    for part in ("resid_post", "attn_out", "mlp_out", "dummy"):
        assert part in text


def test_statistics_in_the_headline_table_and_results(setup, tmp_path, capsys):
    """--permutations, --control and --mdl: the headline's selection-free estimate across both
    models, the table's columns and the saved rows agree with ProbeResults' own statistics."""
    out = tmp_path / "out"
    args = ["probe", "--data", setup["csv"], "--text-col", "sentence", "--label-col", "target",
            "--model", setup["gpt2"], "--model", setup["bert"], "--layers", "0,2",
            "--parts", "resid_post", "--cv", "3", "--max-length", "32", "--permutations", "3",
            "--control", "--mdl", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    res = ProbeResults.read(out / "results.csv")
    sf = res.selection_free()
    assert len(sf["chosen"]) == 3 and {c["model"] for c in sf["chosen"]} <= {"gpt2", "bert"}
    assert (f"rows that did not choose it (nested CV): {sf['mean']:.3f} "
            f"[95% CI {sf['low']:.3f}, {sf['high']:.3f}]") in text
    for col in ("selection-free", "selectivity", "p (holm)", "compression"):
        assert col in text
    st = res.statistics()
    assert len(st) == 4 and st["n_permutations"].eq(3).all()
    # 4 probes, 3 permutations: no p-value can be significant, and the warning says why
    assert "warning: no probe beats the dummy baseline on roc_auc" in text
    assert "use at least 80" in text


def test_shuffled_labels_warn_first_and_mark_the_plot(setup, tmp_path, capsys):
    """No signal: the warning is the first line of the summary, probe.png carries a visible
    "no signal" mark, and the saved pipeline says no-signal in its name."""
    import matplotlib

    matplotlib.use("Agg")
    from embetter_plug.cli.probe import probe_figure

    df = setup["df"].copy()
    df["target"] = np.random.default_rng(0).permutation(df["target"].to_numpy())
    csv = tmp_path / "shuffled.csv"
    df.to_csv(csv, index=False)
    out = tmp_path / "out"
    (out / "best_pipeline").mkdir(parents=True)  # an earlier run's, with signal: replaced
    (out / "best_pipeline.joblib").write_text("earlier")
    assert main(["probe", "--data", str(csv), "--text-col", "sentence", "--label-col", "target",
                 "--model", setup["gpt2"], "--layers", "0,1", "--cv", "3", "--quiet",
                 "--out", str(out), "--overwrite"]) == 0
    text = capsys.readouterr().out
    res = ProbeResults.read(out / "results.csv")
    assert not res.verdict()["beats_chance"]
    summary = text[text.index("activations"):].splitlines()[1:]
    assert summary[0].startswith("warning: no probe beats the dummy baseline"), summary[:3]
    assert text.index("warning:") < text.index("best:")
    assert (out / "best_pipeline_no_signal.joblib").exists() and (out / "best_pipeline_no_signal").is_dir()
    assert not (out / "best_pipeline.joblib").exists() and not (out / "best_pipeline").exists()
    assert "best_pipeline_no_signal.joblib" in text and "this one is noise" in text
    fig = probe_figure(res, signal=False)
    fig.canvas.draw()
    marks = [t for ax in fig.axes for t in ax.texts if t.get_text() == "no signal"]
    assert marks and all(t.get_visible() and 0 < t.get_alpha() for t in marks)
    box = fig.axes[0].get_window_extent()
    assert box.contains(*marks[0].get_window_extent().get_points().mean(0))
    assert fig._suptitle.get_text().startswith("NO SIGNAL")
    clean = probe_figure(res, signal=True)
    assert not [t for ax in clean.axes for t in ax.texts if t.get_text() == "no signal"]
    # the saved image differs from the unmarked figure's
    from matplotlib.image import imread

    clean.savefig(tmp_path / "clean.png", dpi=110)
    saved, plain = imread(out / "probe.png"), imread(tmp_path / "clean.png")
    assert saved.shape == plain.shape and np.abs(saved - plain).max() > 0.2
