"""``layers`` are model block indices everywhere: an array that lost its layout gets it back from
``layout=`` or is refused, never read by position; ``LayerPooler(method=)`` is now ``combine=``."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_validate

from embetter_plug import LayerPooler, TransformerActivationEncoder, probe_layers
from embetter_plug.probe import default_probe

PARTS = ["resid_post", "mlp_out"]


@pytest.fixture(scope="module")
def blocks_0_2(tiny_gpt2, texts):
    """The encoder's output for blocks 0 and 2, and block 2 alone from its own encoder."""
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, layers=[0, 2], parts=PARTS).fit()
    only_2 = TransformerActivationEncoder(model, tok, layers=[2], parts=PARTS).fit()
    return enc, enc.transform(texts), np.asarray(only_2.transform(texts))


def test_a_converted_array_reads_the_blocks_its_layout_names(blocks_0_2):
    enc, X, block_2 = blocks_0_2
    plain = np.asarray(X)
    assert getattr(plain, "layout", None) is None
    out = LayerPooler(layers=[2], parts=["mlp_out"], layout=enc.layout_).fit_transform(plain)
    np.testing.assert_allclose(out, block_2[:, 0, 1], rtol=1e-5, atol=1e-6)
    pooler = LayerPooler(layers=[-1], parts="resid_post", layout=enc.layout_).fit(plain)
    assert pooler.get_feature_names_out()[0] == "layer2__resid_post__0"
    np.testing.assert_allclose(pooler.transform(plain), block_2[:, 0, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers", [[1], [2], -1])
@pytest.mark.parametrize("lost", ["asarray", "slice"])
def test_a_block_selection_on_an_array_without_layout_is_refused(blocks_0_2, lost, layers):
    # np.asarray(X)[:, 1] is block 2: layers=[1] used to read it silently as "block 1", and
    # layers=[2] used to fail saying "it holds blocks [0, 1]" (positions called blocks)
    _, X, _ = blocks_0_2
    plain = np.asarray(X) if lost == "asarray" else X[:, 1:]
    with pytest.raises(ValueError) as err:
        LayerPooler(layers=layers).fit(plain)
    msg = str(err.value)
    assert f"layers={layers!r} are model block indices" in msg and "no layout" in msg
    assert "layout=" in msg and "keep the encoder's output as it is" in msg.lower()
    assert "holds blocks" not in msg and "is not in the input" not in msg
    y = np.arange(len(X)) % 2
    with pytest.raises(ValueError, match=r"probe_layers: layers=.* are model block indices"):
        probe_layers(plain, y, cv=2, layers=layers)


def test_all_on_an_array_without_layout_is_every_position(blocks_0_2):
    _, X, block_2 = blocks_0_2
    tail = X[:, 1:]  # block 2 only, its layout gone
    assert tail.layout is None
    out = LayerPooler(parts=[1]).fit_transform(tail)
    np.testing.assert_allclose(out, block_2[:, 0, 1], rtol=1e-5, atol=1e-6)
    res = probe_layers(tail, np.arange(len(X)) % 2, cv=2, dummy=False, nested=False)
    assert set(res.frame_["layer"]) == {0}  # named by position: the blocks are unknown


def test_an_explicit_layout_must_describe_the_array(blocks_0_2):
    enc, X, _ = blocks_0_2
    with pytest.raises(ValueError, match=r"layout= describes samples of shape \(2, 2, 32\).*"
                                         r"X's samples have shape \(1, 2, 32\)"):
        LayerPooler(layers=[2], layout=enc.layout_).fit(X[:, 1:])
    other = type(enc.layout_)(layers=(0, 1), parts=tuple(PARTS), hidden_size=32)
    with pytest.raises(ValueError, match=r"layout= names blocks \[0, 1\].*X carries its own "
                                         r"layout with blocks \[0, 2\]"):
        LayerPooler(layout=other).fit(X)
    with pytest.raises(ValueError, match=r"does not match the layout"):
        probe_layers(X[:, 1:], np.arange(len(X)) % 2, cv=2, layout=enc.layout_)


def test_probe_layers_on_a_converted_array_with_layout_probes_the_named_block(blocks_0_2):
    enc, X, block_2 = blocks_0_2
    y = np.arange(len(X)) % 2
    res = probe_layers(np.asarray(X), y, cv=2, layout=enc.layout_, layers=[2],
                       parts=["mlp_out"], dummy=False, nested=False, scoring="accuracy")
    assert set(res.frame_["layer"]) == {2} and set(res.frame_["part"]) == {"mlp_out"}
    from sklearn.model_selection import StratifiedKFold

    ref = cross_validate(default_probe(), block_2[:, 0, 1], y, cv=StratifiedKFold(2),
                         scoring="accuracy")["test_score"]
    np.testing.assert_allclose(res.frame_.sort_values("fold")["score"], ref)


def test_a_pickled_copy_keeps_its_layout(blocks_0_2):
    # what joblib workers get (GridSearchCV(n_jobs=2)): the blocks stay named
    enc, X, block_2 = blocks_0_2
    copy = pickle.loads(pickle.dumps(X))
    assert copy.layout == enc.layout_ and copy.index is None
    np.testing.assert_array_equal(np.asarray(copy), np.asarray(X))
    out = LayerPooler(layers=[2], parts=["mlp_out"]).fit_transform(copy)
    np.testing.assert_allclose(out, block_2[:, 0, 1], rtol=1e-5, atol=1e-6)


def test_method_is_a_deprecated_alias_of_combine():
    X = np.random.default_rng(0).normal(size=(5, 3, 2, 4))
    new = LayerPooler(combine="max")
    assert new.get_params()["combine"] == "max"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns nothing
        ref = new.fit_transform(X)
    np.testing.assert_array_equal(ref, X.reshape(5, 6, 4).max(1))
    old = LayerPooler(method="max")
    assert old.get_params()["combine"] == "concat" and old.get_params()["method"] == "max"
    with pytest.warns(FutureWarning, match=r"`method` was renamed `combine`.*combine='max'"):
        out = old.fit_transform(X)
    np.testing.assert_array_equal(out, ref)
    assert old.combine_ == "max" and list(old.get_feature_names_out()[:1]) == ["max__0"]
    twin = clone(old)
    assert twin.get_params() == old.get_params()
    with pytest.warns(FutureWarning):
        np.testing.assert_array_equal(twin.fit_transform(X), ref)
    with pytest.raises(ValueError, match=r"'method' parameter of LayerPooler must be .*Got 'median'"):
        LayerPooler(method="median").fit(X)
