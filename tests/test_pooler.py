"""LayerPooler against NumPy references, and the encoder -> pooler -> probe Pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from embetter_plug import LayerPooler, TransformerActivationEncoder
from embetter_plug.layout import ActivationLayout

X4 = np.random.default_rng(0).normal(size=(6, 5, 3, 4))
#: the blocks X4 holds (every second one), so a block index is not its position
LAYOUT = ActivationLayout(layers=(0, 2, 4, 6, 8), parts=("resid_post", "attn_out", "mlp_out"),
                          hidden_size=4)


@pytest.mark.parametrize("combine", ["mean", "max", "min", "sum"])
def test_aggregations_match_numpy(combine):
    out = LayerPooler(layers=[2, -1], parts=[2, 0], combine=combine,
                      layout=LAYOUT).fit_transform(X4)
    sel = np.stack([X4[:, 1, 2], X4[:, 1, 0], X4[:, 4, 2], X4[:, 4, 0]], axis=1)
    np.testing.assert_allclose(out, getattr(np, combine)(sel, axis=1))


def test_concat_select_and_shapes():
    pooler = LayerPooler(layers=[6, 2], parts=1, layout=LAYOUT).fit(X4)
    out = pooler.transform(X4)
    np.testing.assert_array_equal(out, np.concatenate([X4[:, 3, 1], X4[:, 1, 1]], axis=1))
    assert pooler.get_feature_names_out()[0] == "layer6__attn_out__0"
    sel = LayerPooler(layers=4, combine="select", layout=LAYOUT).fit_transform(X4)
    assert sel.shape == (6, 1, 3, 4)
    np.testing.assert_array_equal(sel[:, 0], X4[:, 2])
    # 3-D input is (n, layers, hidden), 2-D is one layer and one part
    one_part = ActivationLayout(LAYOUT.layers, ("resid_post",), 4)
    np.testing.assert_array_equal(
        LayerPooler(layers=2, layout=one_part).fit_transform(X4[:, :, 0]), X4[:, 1, 0])
    np.testing.assert_array_equal(LayerPooler().fit_transform(X4[:, :, 0]),
                                  X4[:, :, 0].reshape(6, -1))
    np.testing.assert_array_equal(LayerPooler().fit_transform(X4[:, 0, 0]), X4[:, 0, 0])


def test_on_a_plain_array_all_is_every_position_and_a_block_selection_is_refused():
    out = LayerPooler(parts=[0]).fit_transform(X4)  # "all": every position of the layer axis
    np.testing.assert_array_equal(out, X4[:, :, 0].reshape(6, -1))
    for layers in (1, [0, 2], -1):
        with pytest.raises(ValueError) as err:
            LayerPooler(layers=layers).fit(X4)
        msg = str(err.value)
        assert f"layers={layers!r} are model block indices" in msg
        assert "no layout" in msg and "layout=" in msg and "layers='all'" in msg
        assert "holds blocks" not in msg and "block 1 is" not in msg


def test_errors():
    with pytest.raises(ValueError, match=r"block 5 is not in the input; it holds blocks \[0, 2, 4, 6, 8\]"):
        LayerPooler(layers=5, layout=LAYOUT).fit(X4)
    with pytest.raises(ValueError, match=r"layers=5 are model block indices.*no layout"):
        LayerPooler(layers=5).fit(X4)
    with pytest.raises(ValueError, match=r"layout= describes samples of shape \(5, 3, 4\).*"
                                         r"X's samples have shape \(4, 3, 4\)"):
        LayerPooler(layout=LAYOUT).fit(X4[:, 1:])
    with pytest.raises(TypeError, match=r"'layout' parameter of LayerPooler must be None or an "
                                        r"instance of .*ActivationLayout.*Got \{"):
        LayerPooler(layout=LAYOUT.to_dict()).fit(X4)
    with pytest.raises(ValueError, match=r"carries no part names.*0\.\.2"):
        LayerPooler(parts=["resid_post"]).fit(X4)
    with pytest.raises(ValueError, match=r"part position -4"):
        LayerPooler(parts=-4).fit(X4)
    with pytest.raises(ValueError, match=r"'combine' parameter of LayerPooler must be a str among \{.*concat.*\}\. Got 'median'"):
        LayerPooler(combine="median").fit(X4)
    pooler = LayerPooler().fit(X4)
    with pytest.raises(ValueError, match=r"fitted on \(5, 3, 4\)"):
        pooler.transform(X4[:, :4])


def test_feature_names_follow_the_encoder(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    pipe = make_pipeline(
        TransformerActivationEncoder(model, tok, layers=[0, 2], parts=["resid_post", "mlp_out"]),
        LayerPooler(layers=[2], parts=["mlp_out"]),  # block 2 by its index, the part by name
    ).fit(texts[:4])
    names = pipe.get_feature_names_out()
    assert names[0] == "layer2__mlp_out__0" and len(names) == 32
    X = pipe[0].transform(texts[:4])
    np.testing.assert_array_equal(pipe[1].transform(X), X[:, 1, 1])
    with pytest.raises(ValueError, match=r"block 1 is not in the input; it holds blocks \[0, 2\]"):
        LayerPooler(layers=[1]).fit(X)
    rows = X[[3, 1]]  # selecting rows keeps the layout, as cross-validation does
    assert rows.layout == X.layout
    np.testing.assert_array_equal(LayerPooler(layers=-1, parts="mlp_out").fit_transform(rows),
                                  X[[3, 1], 1, 1])
    assert X[:, :1].layout is None  # another selection no longer matches the layout
    mean_names = LayerPooler(combine="mean").fit(X4).get_feature_names_out()
    assert mean_names[0] == "mean__0" and len(mean_names) == 4


def test_grid_search_over_pooler_layers_picks_the_best_layer(tiny_gpt2):
    from embetter_plug import load_builtin_dataset

    df = load_builtin_dataset("train").groupby("label").head(40)
    texts, y = df["text"].tolist(), df["label"].to_numpy()
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, token_pooling="mean")
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    pipe = make_pipeline(enc, LayerPooler(), LogisticRegression(max_iter=500))
    grid = GridSearchCV(pipe, {"layerpooler__layers": [0, 1, 2]}, cv=cv).fit(texts, y)
    # independent truth: cross-validate each layer's slice by hand
    X = enc.fit_transform(texts)
    manual = [cross_val_score(LogisticRegression(max_iter=500), X[:, layer, 0], y, cv=cv).mean()
              for layer in range(3)]
    np.testing.assert_allclose(grid.cv_results_["mean_test_score"], manual, atol=1e-9)
    assert grid.best_params_["layerpooler__layers"] == int(np.argmax(manual))


def test_set_output_frames_2d_output_and_passes_select_through():
    import pandas as pd

    X4 = np.random.default_rng(1).normal(size=(4, 3, 2, 5))
    df = LayerPooler(parts=1).set_output(transform="pandas").fit_transform(X4[:, [0, 2]])
    assert isinstance(df, pd.DataFrame)  # a plain array: named by position
    assert list(df.columns) == [f"layer{l}__part1__{i}" for l in (0, 1) for i in range(5)]
    np.testing.assert_array_equal(df.to_numpy(), X4[:, [0, 2], 1].reshape(4, -1))
    mean = LayerPooler(combine="mean").set_output(transform="pandas").fit_transform(X4)
    assert list(mean.columns) == [f"mean__{i}" for i in range(5)]
    np.testing.assert_allclose(mean.to_numpy(), X4.reshape(4, 6, 5).mean(1))
    sel = LayerPooler(combine="select").set_output(transform="pandas").fit_transform(X4[:, [1]])
    assert isinstance(sel, np.ndarray) and sel.shape == (4, 1, 2, 5)


def test_after_the_encoder_features_are_named_by_model_layer_and_keep_the_texts_index(tiny_gpt2):
    import pandas as pd
    from sklearn.pipeline import make_pipeline

    model, tok = tiny_gpt2
    texts = pd.Series(["a b", "c d e", "f g", "h i j k"], index=[7, 8, 9, 10])
    pipe = make_pipeline(TransformerActivationEncoder(model, tok, layers=[0, 2],
                                                      parts=["resid_post", "mlp_out"]),
                         LayerPooler(layers=[2], parts=[1])).fit(texts)
    out = pipe.set_output(transform="pandas").transform(texts)
    # model layer 2 (position 1 on the layer axis): the same names as get_feature_names_out
    assert list(out.columns) == list(pipe.get_feature_names_out())
    assert out.columns[0] == "layer2__mlp_out__0" and list(out.index) == [7, 8, 9, 10]
    X = pipe[0].transform(texts)
    assert X.layout == pipe[0].layout_ and list(X.index) == [7, 8, 9, 10]
    # selected rows keep the layout and their own index; a computed array carries neither
    assert X[:2].layout == X.layout and list(X[:2].index) == [7, 8]
    assert list(X[np.array([3, 0])].index) == [10, 7]
    assert (X * 2).layout is None and (X * 2).index is None


def test_polars_output_without_polars_says_how_to_get_it(monkeypatch):
    """polars is not a dependency: asking for it names the package and the install, at once."""
    import builtins

    real_import = builtins.__import__

    def no_polars(name, *args, **kwargs):
        if name == "polars":
            raise ImportError("No module named 'polars'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_polars)
    with pytest.raises(ImportError, match=r"needs the polars package.*pip install polars"):
        LayerPooler().set_output(transform="polars")
