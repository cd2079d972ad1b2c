"""Per-head truth for any architecture: the output projection found by what runs, not by name.

On a copy of the model, every modeling file's ``eager_attention_forward`` is wrapped to record
each call, and every ``Linear``/``Conv1D`` records its calls. The output projection of a block's
attention is the first of those writing the hidden size that runs after the block's attention
function returns. Its input is ``attn_z`` (split per head by the attention's own head count),
its output is what the heads of ``attn_result`` plus its bias sum to; the query, key and value
the attention function receives are ``attn_q``/``attn_k``/``attn_v``, and ``output_attentions``
of the same forward holds the patterns.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
import sys

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.arch import blocks as _arch, attention as _attn_find
from embetter_plug.arch.heads import split_head
from embetter_plug.attention.patterns import attention_patterns
from embetter_plug.testing import make_tokenizer

RTOL = ATOL = 1e-4


class NotChecked(Exception):
    """The type cannot be checked per head; the message says why."""


def _is_projection(module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


@contextlib.contextmanager
def _recording(model, events: list):
    """Record attention calls (via each modeling file's eager function) and projection calls."""
    patched = []
    for name in {type(m).__module__ for m in model.modules()}:
        mod = sys.modules.get(name)
        fn = getattr(mod, "eager_attention_forward", None)
        if fn is None or getattr(fn, "_recorded", False):
            continue

        def wrapped(module, query, key, value, *args, __fn=fn, **kwargs):
            out, weights = __fn(module, query, key, value, *args, **kwargs)
            events.append(("attn", module, query.shape[1], weights, key.shape[1],
                           [x[0].float().mean(1).numpy() for x in (query, key, value)]))
            return out, weights

        wrapped._recorded = True
        setattr(mod, "eager_attention_forward", wrapped)
        patched.append((mod, fn))
    handles = [m.register_forward_hook(
        lambda m, a, o: events.append(("proj", m, a[0], o)))
        for m in model.modules() if _is_projection(m)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for mod, fn in patched:
            setattr(mod, "eager_attention_forward", fn)


def _block_of(events, blocks) -> list[int]:
    """Block index of each attention call: in call order when there is one call per block
    (blocks shared between layers), else the block holding the calling module."""
    calls = [e for e in events if e[0] == "attn"]
    if len(calls) == len(blocks):
        return list(range(len(blocks)))
    return [next((i for i, b in enumerate(blocks) if any(m is e[1] for m in b.modules())), None)
            for e in calls]  # None: a call outside the blocks


def reference(model, ids: list[int], hidden: int) -> dict:
    """Per block with attention, of one unpadded text: ``z`` (T, H*d) and ``out`` (T, hidden)
    of the projection after the block's last attention call, its ``bias``, the ``heads`` and
    the number of ``calls``; ``"attentions"``: (H, T, T) per such block from
    ``output_attentions`` (None when not returned)."""
    events: list = []
    run = _arch.runner(model)
    extra = ({"use_cache": False} if "use_cache" in inspect.signature(run.forward).parameters
             else {})
    with _recording(model, events), torch.no_grad():
        out = run(input_ids=torch.tensor([ids]), output_attentions=True, **extra)
    found = {}
    blocks = _arch.find_blocks(model)[1]
    index = iter(_block_of(events, blocks))
    for k, e in enumerate(events):
        if e[0] != "attn":
            continue
        layer = next(index)
        if layer is None:
            continue
        proj = next((p for p in events[k + 1:] if p[0] == "proj" and p[3].shape[-1] == hidden),
                    None)
        if proj is None:
            raise NotChecked("no projection writing the hidden size runs after the attention")
        _, module, z, o = proj
        bias = getattr(module, "bias", None)
        calls = found.get(layer, {}).get("calls", 0) + 1
        found[layer] = {"heads": e[2], "kv_heads": e[4], "qkv": e[5],
                        "z": z[0].float().numpy(), "out": o[0].float().numpy(),
                        "bias": 0.0 if bias is None else bias.detach().float().numpy(),
                        "calls": calls}
    if not found:
        raise NotChecked("attention does not run through its modeling file's "
                         "eager_attention_forward")
    att = getattr(out, "attentions", None)
    att = [None if a is None else a[0].float().numpy() for a in att] if att else None
    if att is not None and len(att) == len(blocks):  # one entry per block: keep attention's
        att = [att[layer] for layer in sorted(found)]
    return {"blocks": found, "attentions": att}


def check_heads(model, texts) -> str:
    """Assert ``attn_z``, ``attn_result`` and the patterns of every block with attention against
    the reference; returns ``"passed"`` or ``"passed (...: what was not checked)"``; raises
    :class:`NotChecked`."""
    hidden = _arch.hidden_size(model)
    tok = make_tokenizer("bpe", padding_side=_arch.padding_side(model, "left"))
    ref_model = copy.deepcopy(model)  # output_attentions leaves capture hooks on a model
    try:
        refs = [reference(ref_model, tok(t)["input_ids"], hidden) for t in texts]
    except NotChecked:  # attention code of its own, or none: checked by name, else refused
        if model.config.model_type in OWN_ATTENTION:
            return check_own_attention(model, tok, texts, OWN_ATTENTION[model.config.model_type])
        try:
            TransformerActivationEncoder(model, tok, parts="attn_z").fit()
        except ValueError as err:
            from embetter_plug.arch.verify import VerificationError

            if isinstance(err, VerificationError):  # the check at fit refuses it: a clear no
                raise NotChecked("per-head parts refused at fit by the check on the model: "
                                 + " ".join(str(err).split())[:160]) from None
            assert re.search("attention function|no output projection", str(err)), err
            why = ("its attention does not call transformers' attention function"
                   if "attention function" in str(err)
                   else "no output projection (a Linear writing the hidden size) after it")
            raise NotChecked(f"per-head parts refused with an error: {why}") from None
        # no softmax attention runs (linear-attention mixers only, at these sizes): the mixer's
        # projection is read per head by the rule for attention code of its own
        raise NotChecked("no attention-function call to check against (linear-attention "
                         "mixers): attn_z/attn_result read the mixer's projection, unchecked")
    layers = sorted(refs[0]["blocks"])
    assert _attn_find.attention_layers(model) == layers, "layers with attention"
    notes = []
    if len(layers) < _arch.n_blocks(model):
        notes.append(f"attention in layers {layers} of {_arch.n_blocks(model)}")
    kw = dict(layers=layers, heads="all", token_pooling="mean", batch_size=len(texts))
    R = np.asarray(TransformerActivationEncoder(model, tok, parts="attn_result", **kw)
                   .fit_transform(texts))
    several = any(b["calls"] > 1 for b in refs[0]["blocks"].values())
    Z, why = None, "head numbers or sizes differ between layers"
    tries = [["attn_z", "attn_q", "attn_k", "attn_v"], ["attn_z"]][1 if several else 0:]
    for d_head in tries:  # one encoder, one forward: every d_head-wide part
        try:
            enc = TransformerActivationEncoder(model, tok, parts=d_head, **kw)
            Z = np.asarray(enc.fit_transform(texts))
            entries = [split_head(p) for p in enc.layout_.parts]
            break
        except ValueError as exc:  # head numbers or sizes that differ between layers, or
            # queries/keys wider than the values (latent attention): refused at fit
            wide = re.search(r"call's q heads are \d+ wide", str(exc))
            assert wide or re.search(r"layer \d+ has (n_heads|n_kv_heads|d_head)=", str(exc)), exc
            why = "the call's queries and keys are wider than its values" if wide else why
    refused = ("attn_z, attn_q/k/v" if Z is None else "attn_q/k/v"
               if len(d_head) == 1 and not several else None)
    if refused:
        notes.append(f"{refused} refused: {why}")
    heads = refs[0]["blocks"][layers[0]]["heads"]
    counts = _attn_find.head_counts(model)  # what attn_q/attn_k/attn_v index
    assert (counts["n_heads"], counts["n_kv_heads"]) == (
        heads, refs[0]["blocks"][layers[0]]["kv_heads"]), "query and key/value heads"
    assert R.shape[:3] == (len(texts), len(layers), heads)
    for i, ref in enumerate(refs):
        for li, layer in enumerate(layers):
            b = ref["blocks"][layer]
            if Z is not None:
                wants = {"attn_z": b["z"].mean(0).reshape(b["heads"], -1),
                         **dict(zip(("attn_q", "attn_k", "attn_v"), b["qkv"]))}
                for part in d_head:
                    rows = [k for k, (p, _) in enumerate(entries) if p == part]
                    np.testing.assert_allclose(Z[i, li, rows], wants[part], rtol=RTOL,
                                               atol=ATOL,
                                               err_msg=f"{part}, text {i}, layer {layer}")
            np.testing.assert_allclose(R[i, li].sum(0) + b["bias"], b["out"].mean(0),
                                       rtol=RTOL, atol=ATOL,
                                       err_msg=f"attn_result, text {i}, layer {layer}")
    if several:
        with pytest.raises(ValueError, match="differential attention"):
            attention_patterns(model, tok, texts, layers=layers)
        with pytest.raises(ValueError, match="differential attention"):
            TransformerActivationEncoder(model, tok, parts="attn_q", **kw).fit()
        return ("passed (q/k/v and patterns refused: several attention calls per block"
                f"{_notes(notes)})")
    if any(r["attentions"] is None for r in refs):
        return "passed (no patterns: output_attentions gives none)"
    pats = attention_patterns(model, tok, texts, layers=layers, batch_size=len(texts))
    for i, (pat, ref) in enumerate(zip(pats, refs)):
        assert len(ref["attentions"]) == len(layers), "one output_attentions entry per layer"
        want = np.stack(ref["attentions"])
        assert pat.pattern.shape == want.shape, f"pattern shape, text {i}"
        np.testing.assert_allclose(pat.pattern, want, atol=1e-5, err_msg=f"pattern, text {i}")
    return "passed" + (f" ({'; '.join(notes)})" if notes else "")


# families with attention code of their own (no eager_attention_forward to follow): where their
# output projection is, relative to a block, written down here as the test's reference
OWN_ATTENTION = {
    "bloom": "self_attention.dense", "falcon": "self_attention.dense", "mpt": "attn.out_proj",
    "deberta": "attention.output.dense", "deberta-v2": "attention.output.dense",
    "mpnet": "attention.attn.o", "openai-gpt": "attn.c_proj", "xglm": "self_attn.out_proj",
    "big_bird": "attention.output.dense", "bigbird_pegasus": "self_attn.output",
    "gpt_neox_japanese": "attention.dense", "ibert": "attention.output.dense",
    "megatron-bert": "attention.output.dense", "mvp": "self_attn.out_proj",
    "prophetnet": "self_attn.out_proj", "rembert": "attention.output.dense",
    "roformer": "attention.output.dense", "tapas": "attention.output.dense",
}


def check_own_attention(model, tok, texts, path: str) -> str:
    """``attn_z``/``attn_result`` of a family with its own attention code against the input and
    output of its output projection (``path`` in each block), hooked in a forward of each text
    alone; q/k/v and patterns must be refused."""
    ref = copy.deepcopy(model)
    blocks = _arch.find_blocks(ref)[1]
    layers = list(range(len(blocks)))
    heads = int(_arch.text_config(model.config).num_attention_heads)
    refs = []
    for t in texts:
        seen = {}
        def keep(module, args, out, layer):
            out = out[0] if isinstance(out, tuple) else out  # (output, scale): I-BERT
            seen.setdefault(layer, (args[0][0].float().numpy(), out[0].float().numpy(), module))

        handles = [blocks[l].get_submodule(path).register_forward_hook(
            lambda m, a, o, l=l: keep(m, a, o, l)) for l in layers]
        try:
            with torch.no_grad():
                _arch.runner(ref)(input_ids=torch.tensor([tok(t)["input_ids"]]))
        finally:
            for h in handles:
                h.remove()
        refs.append(seen)
    kw = dict(layers=layers, heads="all", token_pooling="mean", batch_size=len(texts))
    Z = np.asarray(TransformerActivationEncoder(model, tok, parts="attn_z", **kw)
                   .fit_transform(texts))
    R = np.asarray(TransformerActivationEncoder(model, tok, parts="attn_result", **kw)
                   .fit_transform(texts))
    assert Z.shape[2] == R.shape[2] == heads, "one entry per head"
    for i, seen in enumerate(refs):
        for layer in layers:
            z, out, module = seen[layer]
            bias = 0.0 if getattr(module, "bias", None) is None else \
                module.bias.detach().float().numpy()
            np.testing.assert_allclose(Z[i, layer], z.mean(0).reshape(heads, -1), rtol=RTOL,
                                       atol=ATOL, err_msg=f"attn_z, text {i}, layer {layer}")
            np.testing.assert_allclose(R[i, layer].sum(0) + bias, out.mean(0), rtol=RTOL,
                                       atol=ATOL, err_msg=f"attn_result, text {i}, layer {layer}")
    with pytest.raises(ValueError, match="its own code"):
        TransformerActivationEncoder(model, tok, parts="attn_q").fit()
    with pytest.raises(ValueError, match="its own code"):
        attention_patterns(model, tok, texts[:1])
    return "passed (attn_z, attn_result; q/k/v and patterns refused: attention code of its own)"


def _notes(notes):
    return "".join(f"; {n}" for n in notes)
