"""Every documented feature that needs no extra, after a plain `pip install .` (no test extra).

Run by .ci/run in a fresh virtual environment holding exactly README's main-job install; not a
pytest file (pytest never collects it). Tiny random models keep it to seconds. Each step checks
a number against an independent computation where one is cheap, and the features that need an
extra (the map: plotly; the cluster: ray) must refuse with an error that names the extra.

    python .ci/plain_install_smoke.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*were truncated")
STEPS: list[tuple[str, float]] = []


def step(name):
    def wrap(fn):
        start = time.perf_counter()
        fn()
        STEPS.append((name, time.perf_counter() - start))
        print(f"ok  {name} ({STEPS[-1][1]:.1f} s)", flush=True)
        return fn
    return wrap


TEXTS = ["The cat sat on the mat.", "A new dataset of 10k images.", "short", "stocks fell today",
         "a long sentence about the weather in the mountains this week", "good film", "bad film",
         "the model reads images too"]
WORK = Path(tempfile.mkdtemp(prefix="plain-smoke-"))


@step("encoder: the built-in all-MiniLM-L6-v2 equals its own hidden states")
def _builtin():
    import torch

    from embetter_plug import TransformerActivationEncoder

    enc = TransformerActivationEncoder(layers=[-1], parts="resid_post", token_pooling="mean")
    X = enc.fit_transform(TEXTS[:2])
    model, tok = enc.model_, enc.tokenizer_
    batch = tok(TEXTS[:2], return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        h = model(**batch, output_hidden_states=True).hidden_states[-1].float()
    mask = batch["attention_mask"][..., None].float()
    ref = ((h * mask).sum(1) / mask.sum(1)).cpu().numpy()
    np.testing.assert_allclose(X[:, 0, 0], ref, rtol=1e-4, atol=1e-4)


@step("per-head parts: attn_result heads sum to attn_out; attn_z/q/k/v shapes")
def _heads():
    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.testing import make_tiny_model

    model, tok = make_tiny_model("llama")
    H = TransformerActivationEncoder(model, tok, parts="attn_result", token_pooling="mean")
    A = TransformerActivationEncoder(model, tok, parts="attn_out", token_pooling="mean")
    np.testing.assert_allclose(H.fit_transform(TEXTS).sum(axis=2), A.fit_transform(TEXTS)[:, :, 0],
                               atol=1e-5)
    for part, n in (("attn_z", 4), ("attn_q", 4), ("attn_k", 2), ("attn_v", 2)):
        enc = TransformerActivationEncoder(model, tok, parts=part).fit(TEXTS)
        assert len(enc.layout_.parts) == n, (part, enc.layout_.parts)


@step("every attention metric, and attention_patterns (rows sum to 1)")
def _metrics():
    from embetter_plug.attention import attention_metrics, attention_patterns
    from embetter_plug.testing import make_tiny_model

    model, tok = make_tiny_model("llama")
    frame = attention_metrics(model, tok, TEXTS[:3])
    metrics = {"attn_entropy", "attn_sink", "attn_distance", "attn_density", "attn_value_norm",
               "attn_result_norm", "attn_weighted_value_norm"}
    assert metrics <= set(frame["metric"]), set(frame["metric"])
    assert np.isfinite(frame["value"]).all()
    pats = attention_patterns(model, tok, TEXTS[:2])
    for p in pats:
        np.testing.assert_allclose(p.pattern.sum(-1), 1.0, atol=1e-5)


@step("images: a tiny LLaVA (attn_image, image:mean) and a tiny CLIP tower")
def _images():
    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.testing import make_tiny_vision, make_tiny_vlm

    red = np.zeros((32, 32, 3), "uint8")
    red[..., 0] = 255
    samples = [{"text": "a red square", "image": red}, {"text": "a caption without a picture"}]
    model, processor = make_tiny_vlm("llava")
    enc = TransformerActivationEncoder(model, processor=processor,
                                       token_pooling=["image:mean", "text:mean"])
    acts = enc.fit_transform(samples)
    assert np.isfinite(acts[0]).all() and np.isnan(acts[1, :, 0]).all()
    img = TransformerActivationEncoder(model, processor=processor, parts="attn_image").fit_transform(samples)
    assert np.isfinite(img[0]).all()
    vision, image_processor = make_tiny_vision("clip")
    V = TransformerActivationEncoder(vision, processor=image_processor).fit_transform([red, red // 2])
    assert V.shape[0] == 2 and np.isfinite(V).all()


@step("probe_layers, the report, save_model/load_model")
def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from embetter_plug import (LayerPooler, TransformerActivationEncoder, load_builtin_dataset,
                               load_model, probe_layers, save_model)
    from embetter_plug.testing import save_tiny_model

    df = load_builtin_dataset("train").groupby("label").head(20)
    texts, y = df["text"].tolist(), df["label"].to_numpy()
    folder = str(save_tiny_model("gpt2", WORK / "gpt2"))  # save_model keeps an encoder by folder
    enc = TransformerActivationEncoder(folder, parts=["resid_post", "mlp_out"])
    X = enc.fit_transform(texts)
    with warnings.catch_warnings():  # a tiny random model: no signal, and a warning says so
        warnings.simplefilter("ignore", UserWarning)
        res = probe_layers(X, y, cv=2, layout=enc.layout_)
    assert res.to_html(WORK / "report.html").stat().st_size > 1000
    pipe = make_pipeline(enc, LayerPooler(layers=[1], parts=[0]), LogisticRegression()).fit(texts, y)
    save_model(pipe, WORK / "pipe")
    np.testing.assert_allclose(load_model(WORK / "pipe").predict_proba(texts),
                               pipe.predict_proba(texts), atol=1e-6)


@step("the command line: probe with attention parts, attention, extract")
def _cli():
    import contextlib
    import io

    from embetter_plug import load_builtin_dataset
    from embetter_plug.cli import main
    from embetter_plug.testing import save_tiny_model

    folder = save_tiny_model("llama", WORK / "llama")
    csv = WORK / "small.csv"
    load_builtin_dataset("train").groupby("label").head(10).to_csv(csv, index=False)
    common = ["--data", str(csv), "--model", str(folder), "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["probe", *common, "--parts", "attn_entropy", "--cv", "2",
                     "--out", str(WORK / "probe")]) == 0
        assert main(["attention", *common[:-1], "--layers", "0", "--out", str(WORK / "attn")]) == 0
        assert main(["extract", *common, "--out", str(WORK / "acts.npz")]) == 0
    for name in ("results.csv", "probe.png", "report.html", "heads.png"):  # a layer x head heatmap
        assert (WORK / "probe" / name).exists(), name


@step("features that need an extra name it: the map (plotly), a Ray cluster (ray)")
def _extras():
    from embetter_plug import LabellingMap

    if importlib.util.find_spec("plotly") is None:
        try:
            LabellingMap.from_embeddings(np.eye(6)[:, :2], ["t"] * 6, projection=None)
        except ImportError as exc:
            assert "embetter_plug[map]" in str(exc), exc
        else:
            raise AssertionError("the labelling map ran without plotly")
    if importlib.util.find_spec("ray") is None:
        from embetter_plug.distributed import connect_ray

        try:
            connect_ray("local")
        except ImportError as exc:
            assert "embetter_plug[ray]" in str(exc), exc
        else:
            raise AssertionError("connect_ray ran without ray")


if __name__ == "__main__":
    total = sum(t for _, t in STEPS)
    print(f"plain-install smoke: {len(STEPS)} steps passed in {total:.1f} s", flush=True)
    sys.exit(0)
