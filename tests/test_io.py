"""save_activations / load_activations: .npz round trip with the layout, no pickle, clear errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from embetter_plug import load_activations, save_activations
from embetter_plug.store.io import FORMAT, MANIFEST
from embetter_plug.store.streaming import ShardWriter
from embetter_plug.layout import ActivationLayout

LAYOUT = ActivationLayout(layers=(0, 4), parts=("resid_post", "mlp_out@mean"), hidden_size=3,
                          meta={"model": "tiny", "token_pooling": ["mean"], "max_length": 64})


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_npz_round_trip_keeps_values_dtype_and_layout(dtype, tmp_path):
    X = np.random.default_rng(0).normal(size=(5, 2, 2, 3)).astype(dtype)
    path = save_activations(tmp_path / "acts", X, LAYOUT)
    assert path.name == "acts.npz"
    back, layout = load_activations(path)
    np.testing.assert_array_equal(back, X)
    assert back.dtype == dtype
    assert layout == LAYOUT and layout.meta == LAYOUT.meta
    # plain arrays only: readable by numpy without pickle, layout stored as JSON text
    with np.load(path, allow_pickle=False) as f:
        assert json.loads(str(f["layout"]))["parts"] == ["resid_post", "mlp_out@mean"]
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["X.npy", "layout.npy"]


def test_layout_as_dict_is_accepted(tmp_path):
    X = np.zeros((2, 2, 2, 3), np.float32)
    _, layout = load_activations(save_activations(tmp_path / "a.npz", X, LAYOUT.to_dict()))
    assert layout == LAYOUT


def test_shape_that_does_not_match_the_layout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not match the layout"):
        save_activations(tmp_path / "a.npz", np.zeros((2, 3, 2, 3)), LAYOUT)
    assert not (tmp_path / "a.npz").exists()


def test_pickled_content_is_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, X=np.array([object()], dtype=object), layout=np.array("{}"))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_activations(path)


def test_missing_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no activations at"):
        load_activations(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="without 'X' and 'layout'"):
        load_activations(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable activation file"):
        load_activations(tmp_path / "junk.npz")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="without a manifest.json"):
        load_activations(tmp_path / "folder")


def test_shard_beyond_float16_is_refused_and_complete_shards_stay(tmp_path):
    lay = ActivationLayout(layers=(0,), parts=("resid_post",), hidden_size=3)
    plan = {"format": FORMAT, "version": 1, "shape": [4, 1, 1, 3], "dtype": "float16",
            "shard_size": 2, "n_shards": 2, "texts_sha256": "x", "layout": lay.to_dict(),
            "source": "y"}
    writer = ShardWriter.open(tmp_path / "f", plan)
    first = np.full((2, 1, 1, 3), -65504.0, np.float32)  # the largest float16 magnitude is fine
    first[0, 0, 0, 0] = np.nan  # missing values are not what is judged
    writer.write_shard(0, first)
    second = np.ones((2, 1, 1, 3), np.float32)
    second[1, 0, 0, 2] = -70000.0
    second[0, 0, 0, 1] = np.inf  # already infinite: the finite values are judged
    with pytest.raises(ValueError, match=r"store_dtype='float16' cannot hold .* value in shard 1 "
                                         r"\(rows 2\.\.3\) is 70000, above float16's maximum of "
                                         r"65504.*store_dtype='float32'.*1 of 2 shards were stored"):
        writer.write_shard(1, second)
    assert json.loads((tmp_path / "f" / MANIFEST).read_text())["n_done"] == 1
    with pytest.raises(ValueError, match="1 of 2 shards are complete"):
        load_activations(tmp_path / "f")
    data = np.load(tmp_path / "f" / "activations.npy")
    np.testing.assert_array_equal(data[:2], first.astype(np.float16))
    assert not data[2:].any()  # nothing of the refused shard was written
    second[1, 0, 0, 2] = -60000.0
    writer.write_shard(1, second)  # within range (the inf stays inf)
    X, _ = load_activations(tmp_path / "f")
    np.testing.assert_array_equal(X[2:], second.astype(np.float16))


def test_shards_completed_out_of_order_are_recorded_and_counted(tmp_path):
    lay = ActivationLayout(layers=(0,), parts=("resid_post",), hidden_size=2)
    plan = {"format": FORMAT, "version": 1, "shape": [5, 1, 1, 2], "dtype": "float32",
            "shard_size": 2, "n_shards": 3, "texts_sha256": "x", "layout": lay.to_dict(),
            "source": "y"}
    rows = np.arange(10, dtype=np.float32).reshape(5, 1, 1, 2)
    writer = ShardWriter.open(tmp_path / "f", plan)
    writer.write_rows(4, rows[4:])  # rows written but not recorded: the shard stays pending
    assert writer.pending_shards() == [0, 1, 2]
    writer.mark_complete([2])
    man = json.loads((tmp_path / "f" / MANIFEST).read_text())
    assert (man["n_done"], man["done_after"]) == (0, [2])
    with pytest.raises(ValueError, match="1 of 3 shards are complete"):
        load_activations(tmp_path / "f")
    # a reopened writer sees the same state
    writer = ShardWriter.open(tmp_path / "f", plan)
    assert writer.pending_shards() == [0, 1] and writer.complete_shards() == {2}
    writer.write_shard(0, rows[:2])
    assert json.loads((tmp_path / "f" / MANIFEST).read_text())["done_after"] == [2]
    writer.write_rows(2, rows[2:4])
    writer.mark_complete([1])  # the gap closes: everything counts as done from the start
    man = json.loads((tmp_path / "f" / MANIFEST).read_text())
    assert man["n_done"] == 3 and "done_after" not in man
    np.testing.assert_array_equal(load_activations(tmp_path / "f")[0], rows)
    with pytest.raises(ValueError, match="out of range"):
        writer.write_shard(3, rows[:2])
