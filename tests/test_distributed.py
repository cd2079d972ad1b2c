"""Extraction on a local Ray cluster: equals in-process extraction, dedups per block, survives a
failed task, a killed actor and a killed driver, and refuses bad input before a model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embetter_plug import load_activations
from embetter_plug.io import DATA, MANIFEST
from embetter_plug.testing import make_tiny_model

pytest.importorskip("ray.data")

from _ray_helpers import CountingEncoder, counted  # noqa: E402

ACTOR = {"concurrency": 2, "num_cpus": 0.5}  # two actors still leave a CPU to Ray Data's tasks


@pytest.fixture(scope="module")
def distinct():
    from embetter_plug import load_builtin_dataset

    return list(dict.fromkeys(load_builtin_dataset()["text"]))[:30]


@pytest.fixture(scope="module")
def enc():
    model, tok = make_tiny_model("gpt2")
    return CountingEncoder(model, tok, parts=["resid_post", "mlp_out"], batch_size=4).fit()


@pytest.fixture
def counts(ray_cluster):
    path = ray_cluster.counts
    for p in (path, path.with_name(path.name + ".fail"), path.with_name(path.name + ".die")):
        p.unlink(missing_ok=True)
    return path


@pytest.mark.parametrize("block, kill", [(4, False), (5, True)])
def test_equals_in_process_extraction_in_input_order_and_dedups_per_block(enc, distinct, counts,
                                                                          tmp_path, block, kill):
    """With ``kill``, an actor process exits mid-task: Ray restarts it and retries the task."""
    from embetter_plug.distributed import extract_distributed

    if kill:
        counts.with_name(counts.name + ".die").touch()
    texts = [t for t in distinct for _ in range(2)]  # every text twice, side by side
    ref = enc.transform(texts)  # in-process, in memory
    folder = extract_distributed(enc, tmp_path / "o", texts, batch_size=block, shard_size=12,
                                 **ACTOR)
    X, layout = load_activations(folder)
    assert isinstance(X, np.memmap) and X.shape == (60, 3, 2, 32)
    assert layout == enc.layout_
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-6)
    man = json.loads((folder / MANIFEST).read_text())
    assert (man["n_done"], man["n_shards"], "done_after" in man) == (5, 5, False)
    # each block of `block` consecutive rows forwards each of its distinct texts once
    per_block = [len(set(texts[i:i + block])) for i in range(0, len(texts), block)]
    assert sum(counted(counts)) == sum(per_block)
    assert max(counted(counts)) <= block
    assert not counts.with_name(counts.name + ".die").exists()  # the actor did die
    # the folder is the streamed-extraction one: extract_to finds it complete, computes nothing
    before = len(counted(counts))
    enc.extract_to(folder, texts, shard_size=12)
    assert len(counted(counts)) == before


def test_failed_task_keeps_finished_shards_and_a_rerun_computes_only_the_rest(enc, distinct, counts,
                                                                         tmp_path):
    from embetter_plug.distributed import extract_distributed

    texts = distinct[:30]
    counts.with_name(counts.name + ".fail").touch()  # one forward raises
    with pytest.raises(Exception, match="made to fail once"):
        extract_distributed(enc, tmp_path / "o", texts, batch_size=3, shard_size=6, **ACTOR)
    man = json.loads((tmp_path / "o" / MANIFEST).read_text())
    complete = set(range(man["n_done"])) | set(man.get("done_after", []))
    assert len(complete) < 5
    ref = enc.transform(texts)
    data = np.load(tmp_path / "o" / DATA, mmap_mode="r")
    for k in complete:  # what the manifest calls complete is on disk
        np.testing.assert_allclose(data[6 * k:6 * k + 6], ref[6 * k:6 * k + 6], rtol=1e-5,
                                   atol=1e-6)

    counts.unlink(missing_ok=True)
    folder = extract_distributed(enc, tmp_path / "o", texts, batch_size=3, shard_size=6, **ACTOR)
    assert sum(counted(counts)) == 6 * (5 - len(complete))  # only unfinished shards, once each
    X, _ = load_activations(folder)
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-6)
