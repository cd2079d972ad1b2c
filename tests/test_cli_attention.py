"""`embetter-plug attention` and `probe --heads` on a tiny saved model."""

import numpy as np
import pandas as pd
import pytest

from embetter_plug.cli import main


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from embetter_plug.testing import save_tiny_model

    return str(save_tiny_model("gpt2", tmp_path_factory.mktemp("cli_attn") / "gpt2"))


def test_attention_command_writes_summary_and_heatmaps(gpt2, tmp_path, capsys):
    from embetter_plug import load_builtin_dataset
    from embetter_plug.attention.patterns import attention_metrics, summarize_metrics

    out = tmp_path / "attn"
    code = main(["attention", "--model", gpt2, "--limit", "6", "--layers", "0,2", "--heads", "1,3",
                 "--metrics", "attn_entropy,attn_result_norm", "--out", str(out)])
    assert code == 0
    assert "attn_entropy: mean over 6 texts" in capsys.readouterr().out
    got = pd.read_csv(out / "attention_metrics.csv")
    assert {"attention_attn_entropy.png", "attention_attn_result_norm.png"} <= {
        p.name for p in out.iterdir()}
    from transformers import AutoModel, AutoTokenizer

    texts = list(load_builtin_dataset()["text"][:6])
    model, tok = AutoModel.from_pretrained(gpt2), AutoTokenizer.from_pretrained(gpt2)
    want = summarize_metrics(attention_metrics(model, tok, texts, layers=[0, 2], heads=[1, 3],
                                               metrics=["attn_entropy", "attn_result_norm"]))
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-5)
    assert list(got["head"].unique()) == [1, 3]


def test_attention_command_errors(gpt2, tmp_path, capsys):
    assert main(["attention", "--model", gpt2, "--metrics", "attn_entrpy"]) == 2
    assert "did you mean" in capsys.readouterr().err
    (tmp_path / "attention_metrics.csv").write_text("earlier")
    assert main(["attention", "--model", gpt2, "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_probe_per_head_table(gpt2, tmp_path, capsys):
    out = tmp_path / "probe"
    code = main(["probe", "--model", gpt2, "--max-samples", "40", "--parts", "attn_result",
                 "--heads", "all", "--layers", "0,1", "--cv", "2", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "attn_result.h3" in text and "per layer (rows) x head (columns)" in text
    assert (out / "heads.png").exists()


def test_query_reduction_flag_and_its_deprecated_alias(gpt2, tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    from embetter_plug import load_builtin_dataset
    from embetter_plug.attention.patterns import attention_metrics, summarize_metrics

    args = ["attention", "--model", gpt2, "--limit", "4", "--layers", "1", "--metrics",
            "attn_entropy"]
    assert main(args + ["--query-reduction", "max", "--out", str(tmp_path / "new")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(args + ["--token-pooling", "max", "--out", str(tmp_path / "old")]) == 0
    assert "--token-pooling` was renamed --query-reduction" in capsys.readouterr().err
    new = pd.read_csv(tmp_path / "new" / "attention_metrics.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "old" / "attention_metrics.csv"), new)
    texts = list(load_builtin_dataset()["text"][:4])
    model, tok = AutoModel.from_pretrained(gpt2), AutoTokenizer.from_pretrained(gpt2)
    want = summarize_metrics(attention_metrics(model, tok, texts, layers=[1],
                                               metrics=["attn_entropy"], query_reduction="max"))
    np.testing.assert_allclose(new["mean"], want["mean"], rtol=1e-5)
    mean = summarize_metrics(attention_metrics(model, tok, texts, layers=[1],
                                               metrics=["attn_entropy"]))
    assert not np.allclose(new["mean"], mean["mean"])  # max over queries is not the default mean
    assert main(args + ["--query-reduction", "max", "--token-pooling", "mean"]) == 2
    assert "disagree" in capsys.readouterr().err
