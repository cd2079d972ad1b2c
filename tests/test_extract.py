"""Streamed extraction: shards + manifest, memory-mapped result, resume after SIGKILL, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import assert_same_activations
from embetter_plug import TransformerActivationEncoder, load_activations
from embetter_plug.extraction.extractor import ActivationExtractor
from embetter_plug.store.io import MANIFEST
from embetter_plug.store.streaming import auto_shard_size
from embetter_plug.testing import make_tiny_model, save_tiny_model


@pytest.fixture(scope="module")
def corpus():
    from embetter_plug import load_builtin_dataset

    texts = list(dict.fromkeys(load_builtin_dataset()["text"]))  # distinct, in order
    return texts[:120]


@pytest.fixture
def enc():
    model, tok = make_tiny_model("gpt2")
    return TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"],
                                        batch_size=4).fit()


def test_streamed_folder_equals_in_memory_and_opens_memory_mapped(enc, corpus, tmp_path):
    ref = enc.transform(corpus[:50])
    folder = enc.extract_to(tmp_path / "out", corpus[:50], shard_size=12)
    man = json.loads((folder / MANIFEST).read_text())
    assert (man["n_shards"], man["n_done"], man["shape"]) == (5, 5, [50, 3, 2, 32])
    X, layout = load_activations(folder)
    assert isinstance(X, np.memmap) and not X.flags.writeable
    assert layout == enc.layout_ and layout.meta == enc.layout_.meta
    # batches differ from the in-memory run (formed per shard), so compare to float tolerance
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-6)
    assert not isinstance(load_activations(folder, mmap=False)[0], np.memmap)


def test_float16_storage(enc, corpus, tmp_path):
    ref = enc.transform(corpus[:20])
    X, _ = load_activations(enc.extract_to(tmp_path / "h", corpus[:20], store_dtype="float16"))
    assert X.dtype == np.float16
    np.testing.assert_allclose(X.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    assert (tmp_path / "h" / "activations.npy").stat().st_size < 20 * 3 * 2 * 32 * 2 + 1024


@pytest.fixture(scope="module")
def loud_encoder():
    """A tiny GPT-2 whose embeddings are scaled so that activations exceed float16's 65504."""
    import copy

    import torch

    model, tok = make_tiny_model("gpt2")
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.wte.weight.mul_(1e7)
    return TransformerActivationEncoder(model, tok, layers=[0], batch_size=4).fit()


def test_float16_overflow_is_refused_before_the_shard_is_written(loud_encoder, corpus, tmp_path):
    texts = corpus[:8]
    ref = loud_encoder.transform(texts)
    largest = float(np.abs(ref[:4]).max())
    assert largest > float(np.finfo(np.float16).max)  # the cast would give inf
    with pytest.raises(ValueError) as err:
        loud_encoder.extract_to(tmp_path / "h", texts, shard_size=4, store_dtype="float16")
    msg = str(err.value)
    assert "store_dtype='float16'" in msg and f"{largest:.7g}" in msg
    assert "shard 0 (rows 0..3)" in msg and "store_dtype='float32'" in msg and "overwrite" in msg
    man = json.loads((tmp_path / "h" / MANIFEST).read_text())
    assert man["n_done"] == 0  # nothing recorded as complete
    with pytest.raises(ValueError, match="0 of 2 shards are complete"):
        load_activations(tmp_path / "h")
    # the advice works
    folder = loud_encoder.extract_to(tmp_path / "h", texts, shard_size=4, store_dtype="float32",
                                     overwrite=True)
    np.testing.assert_allclose(load_activations(folder)[0], ref, rtol=1e-5)


def test_memory_is_bounded_by_the_shard(enc, corpus, tmp_path, monkeypatch):
    seen = []
    original = type(enc).encode

    def spy(self, texts):
        seen.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(type(enc), "encode", spy)
    enc.extract_to(tmp_path / "o", corpus, shard_size=16)
    assert max(seen) == 16 and sum(seen) == len(corpus)


def test_interrupted_run_resumes_after_the_last_complete_shard(enc, corpus, tmp_path, monkeypatch):
    calls = []
    original = ActivationExtractor.extract

    def failing(self, texts, **kw):
        calls.append(len(texts))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, texts, **kw)

    monkeypatch.setattr(ActivationExtractor, "extract", failing)
    with pytest.raises(KeyboardInterrupt):
        enc.extract_to(tmp_path / "o", corpus[:60], shard_size=10)
    with pytest.raises(ValueError, match="3 of 6 shards are complete"):
        load_activations(tmp_path / "o")
    calls.clear()
    monkeypatch.setattr(ActivationExtractor, "extract", original)
    monkeypatch.setattr(ActivationExtractor, "extract",
                        lambda self, texts, **kw: calls.append(len(texts)) or original(self, texts, **kw))
    enc.extract_to(tmp_path / "o", corpus[:60], shard_size=10)
    assert calls == [10, 10, 10]  # only the three unfinished shards
    full = enc.extract_to(tmp_path / "ref", corpus[:60], shard_size=10)
    assert_same_activations(load_activations(tmp_path / "o")[0], load_activations(full)[0])


def test_resume_with_another_batch_size_keeps_the_folders_shard_size(enc, corpus, tmp_path,
                                                                      monkeypatch):
    from embetter_plug.store import streaming as epio

    # about 20 rows of (3, 2, 32) float32 per shard: 16 at batch size 8, 20 at batch size 4
    monkeypatch.setattr(epio, "SHARD_BYTES", 20 * 3 * 2 * 32 * 4)
    texts = corpus[:60]
    enc.set_params(batch_size=8).fit()
    ref, _ = load_activations(enc.extract_to(tmp_path / "ref", texts))
    assert json.loads((tmp_path / "ref" / MANIFEST).read_text())["shard_size"] == 16
    calls = []
    original = ActivationExtractor.extract

    def failing(self, texts, **kw):  # a new folder times its first batch: 8, 8, 16, then fail
        calls.append(len(texts))
        if len(calls) == 4:
            raise MemoryError("out of memory")
        return original(self, texts, **kw)

    monkeypatch.setattr(ActivationExtractor, "extract", failing)
    with pytest.raises(MemoryError):
        enc.extract_to(tmp_path / "o", texts)
    with pytest.raises(ValueError, match="2 of 4 shards are complete"):
        load_activations(tmp_path / "o")
    calls.clear()
    monkeypatch.setattr(ActivationExtractor, "extract",
                        lambda self, texts, **kw: calls.append(len(texts)) or original(self, texts, **kw))
    enc.set_params(batch_size=4).fit()  # the usual reaction to running out of memory
    enc.extract_to(tmp_path / "o", texts)
    assert calls == [16, 12]  # only the two unfinished shards, at the folder's shard size
    man = json.loads((tmp_path / "o" / MANIFEST).read_text())
    assert (man["shard_size"], man["n_done"], man["n_shards"]) == (16, 4, 4)
    X, _ = load_activations(tmp_path / "o")
    assert_same_activations(X[:32], ref[:32])  # the shards finished before the crash
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-6)  # other batches: float tolerance
    # a new folder still gets a shard size that is a multiple of the batch size
    enc.extract_to(tmp_path / "new", texts)
    assert json.loads((tmp_path / "new" / MANIFEST).read_text())["shard_size"] == 20
    # an explicit shard size that differs from the folder's is still a different extraction
    with pytest.raises(ValueError, match=r"differs in \['n_shards', 'shard_size'\]"):
        enc.extract_to(tmp_path / "o", texts, shard_size=10)


def test_a_different_extraction_in_the_folder_is_an_error_unless_overwrite(enc, corpus, tmp_path):
    enc.extract_to(tmp_path / "o", corpus[:10], shard_size=5)
    with pytest.raises(ValueError, match=r"differs in \['n_shards', 'shape', 'texts_sha256'\]"):
        enc.extract_to(tmp_path / "o", corpus[:12], shard_size=5)
    enc.extract_to(tmp_path / "o", corpus[:12], shard_size=5, overwrite=True)
    assert load_activations(tmp_path / "o")[0].shape[0] == 12
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an extraction folder"):
        enc.extract_to(tmp_path / "other", corpus[:4])
    with pytest.raises(ValueError, match="store_dtype"):
        enc.extract_to(tmp_path / "x", corpus[:4], store_dtype="int8")
    with pytest.raises(ValueError, match="shard_size"):
        enc.extract_to(tmp_path / "x", corpus[:4], shard_size=0)


def test_auto_shard_size_is_a_multiple_of_the_batch_size():
    assert auto_shard_size((12, 3, 768), "float32", 32) % 32 == 0
    assert auto_shard_size((12, 3, 768), "float32", 32) * 12 * 3 * 768 * 4 <= 64 * 2**20
    assert auto_shard_size((80, 3, 8192), "float32", 32) == 32  # huge rows: one batch per shard


def test_default_shards_keep_minutes_not_hours():
    """A shard closes after about 64 MiB, 256 rows or a minute of work, whichever comes first:
    small rows no longer make shards of hours (MiniLM's 6 x 1 x 384 floats: 7,281 rows by size)."""
    from embetter_plug.store import streaming

    assert streaming.SHARD_ROWS == 256 and streaming.SHARD_SECONDS == 60
    assert auto_shard_size((6, 1, 384), "float32", 32) == 256
    assert auto_shard_size((6, 1, 384), "float32", 32, seconds_per_row=0.5) == 96  # 120 rows
    assert auto_shard_size((6, 1, 384), "float32", 32, seconds_per_row=30.0) == 32  # one batch
    assert auto_shard_size((6, 1, 384), "float32", 32, seconds_per_row=1e-6) == 256


def test_a_new_folders_shards_are_bounded_by_the_speed_of_its_first_batch(enc, corpus, tmp_path,
                                                                          monkeypatch):
    """The first forward pass is timed (and stored, not computed again): at 4 rows a minute
    with batches of 4, a shard is one batch."""
    from embetter_plug.store import streaming
    from embetter_plug.extraction.extractor import ActivationExtractor

    clock = iter(np.arange(1000) * 60.0)  # every perf_counter() call: a minute later
    monkeypatch.setattr(streaming.time, "perf_counter", lambda: next(clock))
    calls = []
    original = ActivationExtractor.extract
    monkeypatch.setattr(ActivationExtractor, "extract",
                        lambda self, texts, **kw: calls.append(len(texts)) or original(self, texts, **kw))
    enc.set_params(batch_size=4).fit()
    out = enc.extract_to(tmp_path / "o", corpus[:18])
    man = json.loads((out / MANIFEST).read_text())
    assert (man["shard_size"], man["n_shards"]) == (4, 5)  # 60 s / 4 rows: 15 s a row
    assert sum(calls) == 18  # the timed batch is shard 0
    np.testing.assert_allclose(load_activations(out)[0], enc.transform(corpus[:18]),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ command line, real SIGKILL
DRIVER = r"""
import sys, time
from embetter_plug import streaming as epio
from embetter_plug.extraction.extractor import ActivationExtractor

count_file, delay = sys.argv[1], float(sys.argv[2])
write = epio.ShardWriter.write_shard
def slow_write(self, k, acts):  # leave time to kill between shards
    write(self, k, acts)
    time.sleep(delay)
epio.ShardWriter.write_shard = slow_write
forward = ActivationExtractor.extract
def counting(self, texts, **kw):
    with open(count_file, "a") as f:
        f.write(f"{len(texts)}\n")
    return forward(self, texts, **kw)
ActivationExtractor.extract = counting
from embetter_plug.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_model("gpt2", root / "model")
    csv = root / "data.csv"
    pd.DataFrame({"text": corpus[:60], "label": 0}).to_csv(csv, index=False)
    (root / "driver.py").write_text(DRIVER)
    return root, model, csv


def _cmd(root, out, model, csv, delay, counts):
    return [sys.executable, str(root / "driver.py"), str(counts), str(delay), "extract",
            "--model", str(model), "--data", str(csv), "--out", str(out), "--shard-size", "10",
            "--parts", "resid_post,mlp_out", "--batch-size", "4"]


def test_sigkill_mid_run_then_rerun_resumes_and_matches_an_uninterrupted_run(cli_setup, corpus):
    root, model, csv = cli_setup
    out, counts = root / "acts", root / "counts.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(_cmd(root, out, model, csv, 0.4, counts), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, done = time.time() + 120, 0
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                done = json.loads((out / MANIFEST).read_text())["n_done"]
            except (FileNotFoundError, json.JSONDecodeError):
                done = 0
            if done >= 2:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = json.loads((out / MANIFEST).read_text())["n_done"]
    assert 2 <= done < 6
    with pytest.raises(ValueError, match="unfinished"):
        load_activations(out)

    counts.unlink()
    rerun = subprocess.run(_cmd(root, out, model, csv, 0, counts), env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    computed = [int(x) for x in counts.read_text().split()]
    assert sum(computed) == 60 - 10 * done  # nothing finished is computed again
    X, layout = load_activations(out)

    enc = TransformerActivationEncoder(str(model), parts=["resid_post", "mlp_out"],
                                       batch_size=4).fit()
    ref, _ = load_activations(enc.extract_to(root / "uninterrupted", corpus[:60], shard_size=10))
    np.testing.assert_allclose(X, ref, rtol=1e-6, atol=1e-7)
    assert layout == enc.layout_


def test_cli_extract_to_npz_reads_back_with_its_layout(cli_setup, corpus, tmp_path):
    from embetter_plug.cli import main

    root, model, csv = cli_setup
    out = tmp_path / "acts.npz"
    rc = main(["extract", "--model", str(model), "--data", str(csv), "--out", str(out),
               "--limit", "16", "--layers", "0,-1", "--parts", "rs,mlp",
               "--token-pooling", "mean"])
    assert rc == 0
    X, layout = load_activations(out)
    enc = TransformerActivationEncoder(str(model), layers=[0, -1], parts=["rs", "mlp"],
                                       token_pooling="mean").fit()
    np.testing.assert_allclose(X, enc.transform(corpus[:16]), rtol=1e-5, atol=1e-6)
    assert layout.layers == (0, 2) and layout.parts == ("resid_post", "mlp_out")
    assert main(["extract", "--model", str(model), "--data", str(csv), "--out", str(out),
                 "--text-col", "nope"]) == 2


def test_extract_to_skips_shards_finished_out_of_order(enc, corpus, tmp_path, monkeypatch):
    from embetter_plug.store.streaming import ShardWriter, extraction_plan

    texts = corpus[:30]
    ref, _ = load_activations(enc.extract_to(tmp_path / "ref", texts, shard_size=10))
    plan = extraction_plan(enc, tmp_path / "o", texts, shard_size=10)
    writer = ShardWriter.open(tmp_path / "o", plan)
    writer.write_shard(2, ref[20:30])  # as a distributed run may leave it
    calls = []
    original = ActivationExtractor.extract
    monkeypatch.setattr(ActivationExtractor, "extract",
                        lambda self, texts, **kw: calls.append(len(texts)) or original(self, texts, **kw))
    enc.extract_to(tmp_path / "o", texts, shard_size=10)
    assert calls == [10, 10]  # shards 0 and 1 only
    np.testing.assert_allclose(load_activations(tmp_path / "o")[0], ref, rtol=1e-5, atol=1e-6)
