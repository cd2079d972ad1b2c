"""Part names ``[vision.]part[.hN][@pooling]``: parsed once by ``layout.PartName``, round-trip
with every name the encoder's layouts produce, and read the same way everywhere."""

import itertools

import pandas as pd
import pytest

from embetter_plug import TransformerActivationEncoder
from embetter_plug.arch.heads import split_head
from embetter_plug.arch.vision import split_stack
from embetter_plug.attention.patterns import head_scores
from embetter_plug.layout import PartName
from embetter_plug.testing import make_tiny_model, make_tiny_vlm

FORM = r"is not of the form \[vision\.\]part\[\.hN\]\[@pooling\]"


def _expected(stack, parts, heads, poolings):
    """The coordinates of each entry, in the part axis' order: part, then head, then pooling."""
    return [PartName(stack, p, h, k if len(poolings) > 1 else None)
            for p in parts for h in heads for k in poolings]


def _check_round_trip(layout_parts, want):
    parsed = [PartName.parse(name) for name in layout_parts]
    assert parsed == want
    assert [str(n) for n in parsed] == list(layout_parts)
    for name, n in zip(layout_parts, parsed):  # the helpers read the same coordinates
        assert split_stack([name]) == (n.stack == "vision",
                                       [str(PartName(None, n.part, n.head, n.pooling))])
        assert split_head(name) == ((n.part, n.head) if n.head is not None else (name, None))


@pytest.mark.parametrize("poolings", [["mean"], ["mean", "lasttoken", 0.5]])
def test_text_parts_and_poolings_round_trip(poolings):
    model, tok = make_tiny_model("gpt2")
    parts = ["resid_post", "attn_out", "mlp_out", "resid_pre", "h.{layer}.mlp"]
    enc = TransformerActivationEncoder(model, tok, layers=[0, 1], parts=parts,
                                       token_pooling=poolings, verify=False).fit()
    names = ["pos0.5" if k == 0.5 else k for k in poolings]
    _check_round_trip(enc.layout_.parts, _expected(None, parts, [None], names))


@pytest.mark.parametrize("parts", [["attn_result"], ["attn_z", "attn_q"],
                                   ["attn_entropy", "attn_sink"]])  # one width per encoder
def test_per_head_parts_round_trip(parts):
    model, tok = make_tiny_model("llama")
    enc = TransformerActivationEncoder(model, tok, layers=[0, 2], parts=parts, heads=[0, 3],
                                       token_pooling=["mean", "max"], verify=False).fit()
    _check_round_trip(enc.layout_.parts, _expected(None, parts, [0, 3], ["mean", "max"]))


def test_vision_tower_and_per_image_poolings_round_trip():
    model, processor = make_tiny_vlm("llava")
    tower = TransformerActivationEncoder(model, processor=processor,
                                         parts=["vision.resid_post", "vision.mlp_out"],
                                         token_pooling=["cls", "image:mean"]).fit()
    _check_round_trip(tower.layout_.parts,
                      _expected("vision", ["resid_post", "mlp_out"], [None],
                                ["cls", "image:mean"]))
    pool = ["image0:mean", "image1:max", "text:mean", "lasttoken"]
    language = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                            parts=["resid_post", "attn_result"], heads=[1],
                                            token_pooling=pool).fit()
    _check_round_trip(language.layout_.parts,
                      _expected(None, ["resid_post"], [None], pool)
                      + _expected(None, ["attn_result"], [1], pool))


@pytest.mark.parametrize("bad", ["", "vision.", "@mean", "mlp_out@", "mlp_out@mean@max",
                                 "vision.@mean"])
def test_a_bad_name_is_one_clear_error(bad):
    with pytest.raises(ValueError, match=rf"part name {bad!r} {FORM}"):
        PartName.parse(bad)
    with pytest.raises(ValueError, match=rf"part name {bad!r} {FORM}"):  # before any model
        TransformerActivationEncoder("no-such-model", parts=["resid_post", bad]).fit(["a"])
    with pytest.raises(TypeError, match="a part name is a string, got 3"):
        PartName.parse(3)


def test_coordinates_are_checked_when_built():
    for kwargs, match in [(dict(stack="audio"), "stack='audio'"), (dict(head=-1), "head=-1"),
                          (dict(head=True), "head=True"), (dict(part="a@b"), "part='a@b'"),
                          (dict(pooling=""), "pooling=''")]:
        with pytest.raises(ValueError, match=match):
            PartName(**{"stack": None, "part": "attn_z", **kwargs})
    assert str(PartName("vision", "mlp_out", None, "cls")) == "vision.mlp_out@cls"
    assert PartName.parse(PartName(None, "attn_z", 2)) == PartName(None, "attn_z", 2)


def test_head_table_reads_head_and_pooling_from_the_names():
    rows = list(itertools.product([0, 1], ["attn_result.h0@mean", "attn_result.h2@mean",
                                           "resid_post@mean", "dummy"]))
    summary = pd.DataFrame({"layer": [r[0] for r in rows], "part": [r[1] for r in rows],
                            "metric": "roc_auc", "mean": range(len(rows))})
    table = head_scores(summary, "roc_auc")
    assert list(table.columns) == [0, 2] and table.values.tolist() == [[0, 1], [4, 5]]
    two = summary.assign(part=summary["part"].str.replace("h2@mean", "h2@max"))
    with pytest.raises(ValueError, match=r"several token poolings \['max', 'mean'\]"):
        head_scores(two, "roc_auc")
