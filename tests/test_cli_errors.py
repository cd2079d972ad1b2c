"""Command line errors: bad option values, bad cells, unusable or existing outputs, all before
any model loads; plain messages, exit code 2, no traceback."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import embetter_plug.cli.extract as cli_extract
import embetter_plug.cli.probe as cli_probe
from conftest import assert_same_activations
from embetter_plug import ProbeResults, load_activations
from embetter_plug.cli import build_parser, main
from embetter_plug.store.io import MANIFEST

# `probe` writes a run folder under the current folder unless --out is given: run in tmp_path.
pytestmark = [pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning"),
              pytest.mark.usefixtures("in_tmp_path")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from embetter_plug import load_builtin_dataset
    from embetter_plug.testing import save_tiny_model

    root = tmp_path_factory.mktemp("cli_errors")
    model = save_tiny_model("gpt2", root / "gpt2")
    df = load_builtin_dataset()
    df = pd.concat([df[df.label == 1].iloc[:10], df[df.label == 0].iloc[:10]]).sample(
        frac=1, random_state=0).reset_index(drop=True)
    df["split"] = ["train"] * 16 + ["test"] * 4
    csv = root / "small.csv"
    df.to_csv(csv, index=False)
    return {"root": root, "model": str(model), "csv": str(csv), "df": df}


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command gets as far as building an encoder."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command built an encoder before checking its input")

    monkeypatch.setattr(cli_extract, "encoder_from_args", refuse)
    monkeypatch.setattr(cli_probe, "encoder_from_args", refuse)


def _csv(setup, tmp_path, **changes):
    """The small CSV with cells changed: ``column=[(row, value), ...]``."""
    df = setup["df"].astype(str)
    for col, cells in changes.items():
        for row, value in cells:
            df.loc[row, col] = value
    path = tmp_path / "edited.csv"
    df.to_csv(path, index=False)
    return str(path)


def _probe(setup, *extra):
    return ["probe", "--data", setup["csv"], "--model", setup["model"], "--layers", "0",
            "--parts", "resid_post", "--cv", "2", *extra]


def _extract(setup, out, *extra):
    return ["extract", "--data", setup["csv"], "--model", setup["model"], "--layers", "0",
            "--out", str(out), *extra]


@pytest.mark.parametrize("command, option, value", [
    ("extract", "--limit", "-5"), ("extract", "--limit", "0"), ("extract", "--shard-size", "0"),
    ("extract", "--batch-size", "-1"), ("extract", "--max-length", "0"),
    ("probe", "--max-samples", "-3"), ("probe", "--cv", "1"), ("probe", "--batch-size", "x"),
])
def test_integer_options_are_checked_by_argparse(command, option, value, capsys):
    argv = [command, option, value] + (["--out", "x"] if command == "extract" else [])
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err
    assert "must be an integer >=" in err or "is not an integer" in err


def test_missing_data_file_and_unknown_column(setup, tmp_path, capsys, no_model):
    for argv in (["extract", "--data", "nope.csv", "--out", str(tmp_path / "x")],
                 ["probe", "--data", "nope.csv"]):
        assert main(argv) == 2
        assert "error: --data 'nope.csv' does not exist." in capsys.readouterr().err
    assert main(_extract(setup, tmp_path / "x", "--text-col", "review")) == 2
    err = capsys.readouterr().err
    # a KeyError's message, without the extra quotes str(KeyError) adds
    assert "extract: error: --text-col 'review' is not a column of" in err
    assert "columns are ['text', 'label', 'split']." in err and '."' not in err


def test_split_without_rows_lists_the_values(setup, tmp_path, capsys, no_model):
    assert main(_extract(setup, tmp_path / "x", "--split", "validation")) == 2
    assert ("--split 'validation' matches no rows of " in (err := capsys.readouterr().err)
            and "values in 'split' are ['test', 'train']" in err)


def test_empty_texts_are_named_by_csv_line_before_subsampling(setup, tmp_path, capsys, no_model):
    csv = _csv(setup, tmp_path, text=[(4, ""), (9, "   ")])
    # data rows 4 and 9 are lines 6 and 11 of the file (the header is line 1)
    assert main(["extract", "--data", csv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--text-col 'text' has 2 empty text(s) at" in err and "line(s) [6, 11]" in err
    assert main(["probe", "--data", csv, "--max-samples", "10", "--cv", "2"]) == 2
    assert "line(s) [6, 11]" in capsys.readouterr().err


def test_empty_labels_and_rare_classes_fail_before_extraction(setup, tmp_path, capsys, no_model):
    csv = _csv(setup, tmp_path, label=[(2, "")])
    assert main(["probe", "--data", csv, "--cv", "2"]) == 2
    err = capsys.readouterr().err
    assert "--label-col 'label' has 1 empty label(s) at" in err and "line(s) [4]" in err
    csv = _csv(setup, tmp_path, label=[(2, "7")])  # one row of a third class
    assert main(["probe", "--data", csv, "--cv", "2"]) == 2
    err = capsys.readouterr().err
    assert "--cv 2 needs at least 2 members of every class, but class 7 has 1" in err
    assert "line(s) [4]" in err


@pytest.mark.parametrize("command", ["extract", "probe"])
def test_unknown_model_is_an_error_without_traceback(setup, tmp_path, capsys, monkeypatch, command):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an OSError from the hub client, not a download
    argv = [command, "--model", "nonexistent-org/nonexistent", "--data", setup["csv"],
            "--layers", "0", "--cv", "2"] if command == "probe" else \
        [command, "--model", "nonexistent-org/nonexistent", "--data", setup["csv"],
         "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"embetter-plug {command}: error:") and "nonexistent-org/nonexistent" in err


@pytest.mark.parametrize("make", ["file", "under_a_file"])
def test_probe_out_is_checked_before_extraction(setup, tmp_path, capsys, no_model, make):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    out = target if make == "file" else target / "sub"
    assert main(_probe(setup, "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"embetter-plug probe: error: --out {str(out)!r}")
    assert "is a file" in err or "cannot be created" in err


def test_probe_refuses_an_earlier_run_unless_overwrite(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_text("earlier")
    with monkeypatch.context() as m:
        m.setattr(cli_probe, "encoder_from_args", lambda *a: pytest.fail("extracted"))
        assert main(_probe(setup, "--out", str(out))) == 2
    assert "already holds an earlier run's ['results.csv']; pass --overwrite" in capsys.readouterr().err
    assert (out / "results.csv").read_text() == "earlier"
    assert main(_probe(setup, "--out", str(out), "--overwrite")) == 0
    assert ProbeResults.read(out / "results.csv").frame_["layer"].dropna().unique().tolist() == [0]


def test_probe_keeps_finished_models_when_interrupted(setup, tmp_path, capsys, monkeypatch):
    calls = []
    real = cli_probe.encoder_from_args

    def second_is_interrupted(ns):
        calls.append(ns.model)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(ns)

    monkeypatch.setattr(cli_probe, "encoder_from_args", second_is_interrupted)
    out = tmp_path / "run"
    assert main(_probe(setup, "--model", setup["model"], "--out", str(out))) == 130
    res = ProbeResults.read(out / "results.csv")
    assert set(res.frame_["model"]) == {setup["model"]} and len(calls) == 2
    assert set(res.frame_["part"]) == {"resid_post", "dummy"}


def test_extract_npz_is_not_replaced_unless_overwrite(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "acts.npz"
    assert main(_extract(setup, out, "--limit", "6")) == 0
    first, _ = load_activations(out)
    with monkeypatch.context() as m:
        m.setattr(cli_extract, "encoder_from_args", lambda *a: pytest.fail("model loaded"))
        assert main(_extract(setup, out, "--limit", "4")) == 2
    assert "already exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert load_activations(out)[0].shape[0] == 6
    assert main(_extract(setup, out, "--limit", "4", "--overwrite")) == 0
    assert load_activations(out)[0].shape[0] == 4
    np.testing.assert_allclose(load_activations(out)[0], first[:4], rtol=1e-5, atol=1e-6)


def test_extract_out_of_another_kind_is_refused_before_the_model_loads(setup, tmp_path, capsys,
                                                                        no_model):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(_extract(setup, a_file)) == 2
    assert "is a file; without the .npz suffix" in capsys.readouterr().err
    (tmp_path / "dir.npz").mkdir()
    assert main(_extract(setup, tmp_path / "dir.npz")) == 2
    assert "is a folder; a .npz output is one file" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert main(_extract(setup, other)) == 2
    assert "is not an extraction folder" in capsys.readouterr().err


def test_extract_says_complete_or_resumed(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "acts"
    argv = _extract(setup, out, "--limit", "12", "--shard-size", "4")
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("wrote activations (12, 1, 1, 32)")
    X, _ = load_activations(out)
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("already complete, nothing to do: activations")
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "n_done": 1}))  # as if stopped early
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("resumed after shard 1 of 3")
    assert_same_activations(load_activations(out)[0], X)
    # another extraction in the folder is refused before the model loads
    monkeypatch.setattr(cli_extract, "encoder_from_args", lambda *a: pytest.fail("model loaded"))
    assert main(_extract(setup, out, "--limit", "8", "--shard-size", "4")) == 2
    assert "already holds a different extraction (differs in ['texts_sha256', 'number of texts'])" \
        in capsys.readouterr().err


def test_extract_resumes_with_a_smaller_batch_size(setup, tmp_path, capsys, monkeypatch):
    from embetter_plug.store import streaming as epio
    from embetter_plug.extraction.extractor import ActivationExtractor

    # about 6 rows of (1, 1, 32) float32 per shard: 4 at --batch-size 4, 6 at --batch-size 2
    monkeypatch.setattr(epio, "SHARD_BYTES", 6 * 32 * 4)
    out, calls = tmp_path / "acts", []
    forward = ActivationExtractor.extract

    def interrupted(self, texts, **kw):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return forward(self, texts, **kw)

    monkeypatch.setattr(ActivationExtractor, "extract", interrupted)
    assert main(_extract(setup, out, "--batch-size", "4")) == 130
    capsys.readouterr()
    calls.clear()
    monkeypatch.setattr(ActivationExtractor, "extract",
                        lambda self, texts, **kw: calls.append(len(texts)) or forward(self, texts, **kw))
    assert main(_extract(setup, out, "--batch-size", "2")) == 0
    assert capsys.readouterr().out.startswith("resumed after shard 1 of 5")
    assert calls == [4, 4, 4, 4]
    assert main(_extract(setup, tmp_path / "ref", "--batch-size", "4")) == 0
    np.testing.assert_allclose(load_activations(out)[0], load_activations(tmp_path / "ref")[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".npz", ""])
def test_extract_refuses_float16_overflow_before_writing(setup, tmp_path, capsys, monkeypatch,
                                                         suffix):
    import copy

    import torch

    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.testing import make_tiny_model

    model, tok = make_tiny_model("gpt2")
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.wte.weight.mul_(1e7)  # activations far above float16's 65504
    monkeypatch.setattr(cli_extract, "encoder_from_args",
                        lambda args: TransformerActivationEncoder(model, tok, layers=[0]))
    out = tmp_path / f"acts{suffix}"
    assert main(_extract(setup, out, "--limit", "4", "--store-dtype", "float16")) == 2
    err = capsys.readouterr().err
    assert re.search(r"store_dtype='float16' cannot hold these activations: the largest absolute "
                     r"value.* is \d+(\.\d+)?, above float16's maximum of 65504", err)
    assert "--store-dtype float32" in err
    if suffix:
        assert not out.exists()
    else:
        assert json.loads((out / MANIFEST).read_text())["n_done"] == 0
    assert main(_extract(setup, out, "--limit", "4", "--overwrite")) == 0
    assert np.isfinite(load_activations(out)[0]).all()


@pytest.mark.parametrize("command", ["probe", "extract"])
def test_help_shows_defaults_without_markup(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    text = " ".join(sub.format_help().split())
    assert "``" not in text
    assert "(default: 32)" in text  # --batch-size
    if command == "probe":
        assert "(default: resid_post,attn_out,mlp_out)" in text and "(default: 5)" in text
        assert "seed for --max-samples (default: 0)" in text  # a default of 0 is shown too
    else:
        assert "(default: resid_post)" in text


def test_probe_says_when_no_probe_beats_the_dummy(setup, tmp_path, capsys, recwarn):
    csv = tmp_path / "same.csv"
    setup["df"].assign(text="one and the same sentence").to_csv(csv, index=False)
    assert main(["probe", "--data", str(csv), "--model", setup["model"], "--layers", "0,1",
                 "--cv", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"best: layer 0 resid_post .*roc_auc 0.500 ± 0.000", out)  # identical texts
    assert "warning: no probe beats the dummy baseline on roc_auc" in out
    assert not [w for w in recwarn if "dummy baseline" in str(w.message)]  # said once, in the summary


@pytest.mark.parametrize("content, message", [
    ("", r"--data '.*bad\.csv' is empty; give a CSV file with a header line"),
    ("text,label\n", r"--data '.*bad\.csv' holds a header line \(\['text', 'label'\]\) but no rows"),
    ("text\tlabel\nhello world\t1\nbye\t0\nfoo, bar\t1\n",
     r"--data '.*bad\.csv' cannot be read as a comma-separated CSV file .*tab-separated"),
    ("text\tlabel\nhello world\t1\nbye\t0\n",
     r"--data '.*bad\.csv' has a single column 'text\\tlabel'; its header line looks tab-separated"),
    ('text,label\n"a,b",1,2\nx,1\n', r"rows have more fields than the header line's 2 column"),
])
@pytest.mark.parametrize("command", ["probe", "extract"])
def test_malformed_csv_is_named_with_the_problem(tmp_path, capsys, no_model, content, message,
                                                 command):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    out = ["--out", str(tmp_path / "acts.npz")] if command == "extract" else []
    assert main([command, "--data", str(csv), *out]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and err.count("\n") == 1


def test_negative_layers_and_heads_as_separate_values(setup, tmp_path, capsys):
    """`--layers -2,-1` (the help's own example has -1) reads like `--layers=-2,-1`."""
    from embetter_plug import TransformerActivationEncoder

    out = tmp_path / "acts.npz"
    assert main(["extract", "--data", setup["csv"], "--model", setup["model"], "--layers", "-2,-1",
                 "--parts", "attn_z", "--heads", "-1", "--out", str(out), "--quiet"]) == 0
    X, layout = load_activations(out)
    enc = TransformerActivationEncoder(setup["model"], layers=[-2, -1], parts="attn_z",
                                       heads=[-1]).fit(setup["df"]["text"].tolist())
    assert layout.layers == enc.layout_.layers and layout.parts == enc.layout_.parts
    np.testing.assert_allclose(X, enc.transform(setup["df"]["text"].tolist()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("command", ["probe", "extract"])
def test_image_errors_count_rows_by_csv_line(tmp_path, capsys, no_model, command):
    """A missing and an unreadable image are both named by their CSV line (header: line 1)."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_text("not an image")
    images = ["ok.png", "ok.png", "ok.png", "broken.png"]
    pd.DataFrame({"text": ["a", "b", "c", "d"], "image": images, "label": [0, 1, 0, 1]}).to_csv(
        tmp_path / "data.csv", index=False)
    out = ["--out", str(tmp_path / "acts.npz")] if command == "extract" else ["--cv", "2"]
    assert main([command, "--data", str(tmp_path / "data.csv"), "--image-col", "image", *out]) == 2
    err = capsys.readouterr().err
    assert "line(s) [5] (the header is line 1)" in err and "broken.png" in err, err
    assert "--data[" not in err
