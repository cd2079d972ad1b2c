"""Per-head truth for any architecture: the output projection found by what runs, not by name.

On a copy of the model, every modeling file's ``eager_attention_forward`` is wrapped to record
each call, and every ``Linear``/``Conv1D`` records its calls. The output projection of a block's
attention is the first of those writing the hidden size that runs after the block's attention
function returns. Its input is ``attn_z`` (split per head by the width of the attention's own
output), its output is what the heads of ``attn_result`` plus its bias sum to, and the weights
the eager function returns are the patterns (``output_attentions`` of the same forward).
"""

from __future__ import annotations

import contextlib
import copy
import sys

import numpy as np
import torch

from embetter_plug import TransformerActivationEncoder, _arch
from embetter_plug.attention import attention_patterns
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
            events.append(("attn", query.shape[1], out.shape[-1], weights))
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


def reference(model, ids: list[int], n_blocks: int, hidden: int) -> dict:
    """Per block of one unpadded text: ``z`` (T, H*d), ``out`` (T, hidden), ``bias``, ``heads``;
    and ``attentions`` (blocks, H, T, T) from ``output_attentions`` (None when not returned)."""
    events: list = []
    with _recording(model, events), torch.no_grad():
        out = _arch.runner(model)(input_ids=torch.tensor([ids]), output_attentions=True)
    blocks = []
    for k, e in enumerate(events):
        if e[0] != "attn":
            continue
        proj = next((p for p in events[k + 1:] if p[0] == "proj" and p[3].shape[-1] == hidden),
                    None)
        if proj is None:
            raise NotChecked("no projection writing the hidden size runs after the attention")
        _, module, z, o = proj
        bias = getattr(module, "bias", None)
        blocks.append({"heads": e[1], "z": z[0].float().numpy(), "out": o[0].float().numpy(),
                       "bias": 0.0 if bias is None else bias.detach().float().numpy()})
    if not blocks:
        raise NotChecked("attention does not run through its modeling file's "
                         "eager_attention_forward")
    if len(blocks) != n_blocks:
        raise NotChecked(f"{len(blocks)} attention calls for {n_blocks} blocks")
    att = getattr(out, "attentions", None)
    att = np.stack([a[0].float().numpy() for a in att]) if att else None
    return {"blocks": blocks, "attentions": att}


def check_heads(model, texts) -> str:
    """Assert ``attn_z``, ``attn_result`` and the patterns of every block against the reference;
    returns ``"passed"`` or ``"passed (no patterns: why)"``; raises :class:`NotChecked`."""
    n, hidden = _arch.n_blocks(model), _arch.hidden_size(model)
    tok = make_tokenizer("bpe", padding_side=_arch.padding_side(model, "left"))
    ref_model = copy.deepcopy(model)  # output_attentions leaves capture hooks on a model
    refs = [reference(ref_model, tok(t)["input_ids"], n, hidden) for t in texts]
    kw = dict(heads="all", token_pooling="mean", batch_size=len(texts))
    Z = np.asarray(TransformerActivationEncoder(model, tok, parts="attn_z", **kw)
                   .fit_transform(texts))
    R = np.asarray(TransformerActivationEncoder(model, tok, parts="attn_result", **kw)
                   .fit_transform(texts))
    heads = refs[0]["blocks"][0]["heads"]
    assert Z.shape[:3] == (len(texts), n, heads) and R.shape[:3] == Z.shape[:3]
    for i, ref in enumerate(refs):
        for layer, b in enumerate(ref["blocks"]):
            want = b["z"].mean(0).reshape(b["heads"], -1)
            np.testing.assert_allclose(Z[i, layer], want, rtol=RTOL, atol=ATOL,
                                       err_msg=f"attn_z, text {i}, layer {layer}")
            np.testing.assert_allclose(R[i, layer].sum(0) + b["bias"], b["out"].mean(0),
                                       rtol=RTOL, atol=ATOL,
                                       err_msg=f"attn_result, text {i}, layer {layer}")
    if any(r["attentions"] is None for r in refs):
        return "passed (no patterns: output_attentions gives none)"
    pats = attention_patterns(model, tok, texts, batch_size=len(texts))
    for i, (pat, ref) in enumerate(zip(pats, refs)):
        assert pat.pattern.shape == ref["attentions"].shape, f"pattern shape, text {i}"
        np.testing.assert_allclose(pat.pattern, ref["attentions"], atol=1e-5,
                                   err_msg=f"pattern, text {i}")
    return "passed"
