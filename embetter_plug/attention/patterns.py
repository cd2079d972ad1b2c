"""Look inside attention: patterns per text, attention metrics per head, layer x head heatmaps.

- :func:`attention_patterns` returns, per text, the post-softmax pattern of every requested
  layer and head over the text's real tokens (no padding), with the tokens;
  :meth:`AttentionPattern.plot` draws one layer and head with the tokens on both axes, and
  :meth:`AttentionPattern.to_html` writes a self-contained page to browse them.
- :func:`attention_metrics` computes pattern metrics (entropy, attention to the first token,
  mean distance, density, value and head-output norms) on the fly, one layer at a time, and
  returns a tidy frame; :func:`summarize_metrics` averages it per layer and head and
  :func:`plot_head_heatmap` draws a layer x head heatmap of one metric (or of per-head probe
  scores, :func:`head_scores`).

Per-head vectors and metrics as features (for ``LayerPooler`` and ``probe_layers``) come from
:class:`~embetter_plug.TransformerActivationEncoder` with ``parts="attn_result"`` (or any
attention part) and ``heads=``; see ``docs/attention.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..arch import blocks as _arch, heads as _attn_arch, attention as _attn_find
from . import parts as _attn_parts
from .._constraints import (POSITIVE_INT, Heads, Hidden, Indices, PromptTemplate, StrOptions,
                            TokenPoolings, validate_params)
from ..extraction.hooks import hook_manager
from ..layout import PartName
from .._utils import resolve_indices, warn_user
from ..inputs.samples import check_inputs, has_images

__all__ = ["AttentionPattern", "attention_metrics", "attention_patterns", "head_scores",
           "metrics_frame", "plot_head_heatmap", "summarize_metrics"]


@dataclass
class AttentionPattern:
    """The attention of one text: ``pattern[layer_pos, head_pos, query, key]`` over its real
    tokens; ``layers`` are block indices, ``heads`` head indices."""

    text: str
    tokens: list
    layers: tuple
    heads: tuple
    pattern: np.ndarray

    def plot(self, layer: int, head: int, ax=None):
        """Heatmap of one layer and head, queries down, keys across, tokens on both axes."""
        import matplotlib.pyplot as plt

        if layer not in self.layers or head not in self.heads:
            raise ValueError(f"layer {layer}, head {head} not computed; this pattern holds "
                             f"layers {list(self.layers)} and heads {list(self.heads)}.")
        p = self.pattern[self.layers.index(layer), self.heads.index(head)]
        if ax is None:
            size = 2 + 0.25 * len(self.tokens)
            _, ax = plt.subplots(figsize=(size + 1, size))
        im = ax.imshow(p, cmap="viridis", vmin=0.0, vmax=1.0)
        ticks = range(len(self.tokens))
        ax.set_xticks(ticks, self.tokens, rotation=90, fontsize=8)
        ax.set_yticks(ticks, self.tokens, fontsize=8)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(f"layer {layer}, head {head}")
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
        return ax

    def grouped(self, tokens) -> "AttentionPattern":
        """The pattern with each run of consecutive tokens in ``tokens`` (an image's tokens,
        say) as one entry ``<N x token>``: as a key it holds the run's summed weight, as a
        query the mean of its rows, so each row still sums to 1 and a sample of hundreds of
        image tokens fits a view."""
        tokens = set(tokens)
        groups: list[list[int]] = []
        for i, t in enumerate(self.tokens):
            if t in tokens and groups and groups[-1][-1] == i - 1 and \
                    self.tokens[groups[-1][0]] in tokens:
                groups[-1].append(i)
            else:
                groups.append([i])
        if len(groups) == len(self.tokens):
            return self
        n = len(self.tokens)
        assign = np.zeros((n, len(groups)))
        for g, members in enumerate(groups):
            assign[members, g] = 1.0
        keys = self.pattern @ assign  # summed over each run's keys
        pattern = np.einsum("qg,lhqk->lhgk", assign / assign.sum(0), keys)  # mean of its rows
        names = [self.tokens[m[0]] if len(m) == 1 else f"<{len(m)} x {self.tokens[m[0]]}>"
                 for m in groups]
        return AttentionPattern(self.text, names, self.layers, self.heads,
                                pattern.astype(self.pattern.dtype))

    def to_html(self, path, *, title: str | None = None):
        """Write a self-contained HTML page showing the pattern of a chosen layer and head
        (tokens on both axes, the weight on hover); returns the path."""
        from .page import write_pattern_html

        return write_pattern_html(self, path, title=title)


def _model_and_settings(model, tokenizer, max_length, prompt_template):
    """A fitted encoder gives its model, tokenizer and settings; a model needs a tokenizer.
    ``(model, tokenizer, max_length, template, warn)``; ``warn``: no limit was chosen, so a
    text cut to the model's own limit is warned of (the encoder's rule)."""
    from ..encoder import TransformerActivationEncoder

    if isinstance(model, TransformerActivationEncoder):
        enc = model
        if getattr(enc, "model_", None) is None:
            raise ValueError("the encoder is not fitted (or was unpickled without its model); "
                             "call its fit() first.")
        limit = _arch.token_limit(enc.model_, enc.tokenizer_)
        chosen = max_length if max_length is not None else enc.max_length
        return (enc.model_, enc.tokenizer_, min(max_length or enc.max_length_, limit),
                prompt_template if prompt_template is not None else enc.prompt_template,
                chosen is None or chosen > limit)
    if tokenizer is None:
        raise ValueError("attention_patterns needs the model's tokenizer (or pass a fitted "
                         "TransformerActivationEncoder).")
    limit = _arch.token_limit(model, tokenizer)  # the encoder's rule
    if max_length is not None and max_length > limit:
        warn_user(f"max_length={max_length} is above the model's limit of {limit} tokens; "
                  f"texts are cut to {limit}.", UserWarning)
    return (model, tokenizer, min(max_length or limit, limit), prompt_template,
            max_length is None or max_length > limit)


class _PatternSink:
    """A sink of the extractor's loop (see :mod:`embetter_plug.extraction.extractor`): receives the
    attention calls of each forward and hands back, per text of the batch, ``(token ids,
    (layers, heads, S, S) pattern over its real tokens)``; one layer's pattern of the batch is
    alive at a time, and the batch is refused before its forward when one would not fit."""

    def __init__(self, model, infos, heads, budget):
        self.model, self.heads, self.budget = model, heads, budget
        self._modules = {(id(i.core), "attn"): i.core for i in infos}
        self._keys = {k: pos for pos, k in enumerate(self._modules)}

    def __enter__(self) -> "_PatternSink":
        self._manager = hook_manager(self.model)
        self._attached = self._manager.attached(self._modules)
        self._attached.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self._attached.__exit__(*exc)
        return False

    def receive(self, key, call):
        p = call.pattern()[:, self.heads]  # (B, heads, S, S)
        self._out[self._keys[key]] = [p[b][:, m][:, :, m].cpu().numpy()
                                      for b, m in enumerate(self._mask)]

    def run(self, forward, mask, *, input_ids=None, **_):
        self.budget.check_batch(*mask.shape)
        self._mask, self._out = mask.bool(), {}
        with self._manager.routing(self, self._keys):
            forward()
        out, self._out = self._out, None
        return [(ids[m].tolist(), np.stack([out[li][b] for li in range(len(self._keys))]))
                for b, (ids, m) in enumerate(zip(input_ids, self._mask))]


@validate_params({"layers": [Indices("layers")], "heads": [Heads()],
                  "max_length": [None, POSITIVE_INT], "batch_size": [POSITIVE_INT],
                  "prompt_template": [PromptTemplate()]})
def attention_patterns(model, tokenizer=None, texts: Sequence[str] = (), *, layers: Any = "all",
                       heads: Any = "all", max_length: int | None = None, batch_size: int = 8,
                       prompt_template: str | None = None) -> list[AttentionPattern]:
    """Post-softmax attention patterns of ``texts`` over their real tokens.

    Parameters
    ----------
    model : transformers model or fitted TransformerActivationEncoder
        Its attention must go through transformers' attention function with the eager or SDPA
        implementation (under SDPA the pattern is computed from the same q, k and mask by the
        modeling file's eager function; the model's own implementation is left in place).
    tokenizer : tokenizer, optional
        Needed with a model (an encoder brings its own).
    texts : list of str, or image+text samples
        Samples (see :mod:`embetter_plug.inputs.samples`) need a vision-language model and its
        processor: pass the processor as ``tokenizer``, or a fitted encoder that has one.
    layers : "all", int or list of int, default="all"
        Block indices; negative ones count from the end.
    heads : "all", int or list of int, default="all"
    max_length, batch_size, prompt_template
        As for the encoder; the pattern does not depend on how texts are batched.

    Returns
    -------
    list of :class:`AttentionPattern`, one per text, each row summing to 1.

    Notes
    -----
    Texts run through :class:`~embetter_plug.extraction.extractor.ActivationExtractor`'s loop (tokenized,
    padded and positioned as the encoder does it) with a sink that keeps the patterns.

    Examples
    --------
    >>> from embetter_plug.attention.patterns import attention_patterns
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("llama")
    >>> pats = attention_patterns(model, tok, ["a short text", "another one"], layers=[0, 2])
    >>> pats[0].pattern.shape == (2, 4, len(pats[0].tokens), len(pats[0].tokens))
    True
    >>> bool(abs(pats[0].pattern.sum(-1) - 1).max() < 1e-5)
    True
    """
    from ..extraction.extractor import ActivationExtractor

    texts = check_inputs(texts, name="texts")
    samples = has_images(texts)
    processor = tokenizer if tokenizer is not None else getattr(model, "processor_", None)
    if samples and not hasattr(processor, "image_processor"):
        raise ValueError("image+text samples need the model's processor: pass it as tokenizer= "
                         "(or a fitted encoder with processor=).")
    model, tokenizer, max_length, template, warn = _model_and_settings(
        model, getattr(processor, "tokenizer", processor) if samples else tokenizer,
        max_length, prompt_template)
    layer_idx = resolve_indices(layers, _arch.n_blocks(model), name="layers", what="layer",
                                context="the model", unit="blocks")
    infos = _attn_find.layer_infos(model, layer_idx)
    _attn_arch.check_single_call(infos, layer_idx, ["pattern"])
    _attn_arch.check_same_heads(model, infos, layer_idx, ["attn_result"])  # one head axis
    head_idx = _attn_arch.select_heads(heads, "attn_z", _attn_find.head_counts(model))
    budget = _attn_parts.PatternBudget(model, infos[0], len(layer_idx))
    extractor = ActivationExtractor(model, tokenizer, layers=tuple(layer_idx), parts=(),
                                    poolings=(), max_length=max_length, batch_size=batch_size,
                                    prompt_template=template,
                                    processor=processor if samples else None,
                                    warn_truncation=warn)
    found: dict = {}
    for idx, rows in extractor.iter_batches(texts, sink=_PatternSink(model, infos, head_idx,
                                                                      budget)):
        found.update(zip(idx.tolist(), rows))
    return [AttentionPattern((t.text or "") if samples else t,
                             tokenizer.convert_ids_to_tokens(found[i][0]), tuple(layer_idx),
                             tuple(head_idx), found[i][1])
            for i, t in enumerate(texts)]


@validate_params({"layers": [Indices("layers")], "heads": [Heads()],
                  "query_reduction": [TokenPoolings()],
                  "token_pooling": [TokenPoolings(), Hidden(StrOptions({"deprecated"}))]})
def attention_metrics(model, tokenizer=None, texts: Sequence[str] = (), *,
                      metrics: Any = "all", layers: Any = "all", heads: Any = "all",
                      query_reduction: Any = "mean", token_pooling: Any = "deprecated",
                      **encoder_params):
    """Attention metrics per text, layer and head, computed on the fly, as a tidy frame.

    Each metric is a per-head part of :class:`~embetter_plug.TransformerActivationEncoder`
    (``attn_entropy``, ``attn_sink``, ``attn_distance``, ``attn_density``,
    ``attn_value_norm``, ``attn_result_norm``, ``attn_weighted_value_norm``; see
    ``docs/attention.md``), one value per query token, reduced over the query tokens with
    ``query_reduction``; no pattern is kept beyond the layer being computed.

    Parameters
    ----------
    query_reduction : str, float or list of those, default="mean"
        How each metric's per-query-token values become one value per text: any of the
        encoder's token poolings (``"mean"``, ``"max"``, ``"lasttoken"``, ``"first"``, a
        relative position such as ``0.5``, ...), passed to it as its ``token_pooling``.
    token_pooling : default="deprecated"
        Former name of ``query_reduction``.

        .. deprecated:: 0.2
           Renamed ``query_reduction``; will be removed in the next release.

    Returns
    -------
    pandas.DataFrame with columns ``text, layer, head, metric, value`` (``text`` is the row
    position in ``texts``).

    Examples
    --------
    >>> from embetter_plug.attention.patterns import attention_metrics, summarize_metrics
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("gpt2")
    >>> frame = attention_metrics(model, tok, ["one text", "and another"],
    ...                           metrics=["attn_entropy", "attn_sink"], layers=[0, 1])
    >>> list(frame.columns), len(frame)
    (['text', 'layer', 'head', 'metric', 'value'], 32)
    >>> summarize_metrics(frame).shape
    (16, 5)
    """
    from ..encoder import TransformerActivationEncoder

    if not (isinstance(token_pooling, str) and token_pooling == "deprecated"):
        warn_user("attention_metrics' `token_pooling` was renamed `query_reduction` and will be "
                  f"removed in the next release; use query_reduction={token_pooling!r}.",
                  FutureWarning)
        query_reduction = token_pooling
    names = list(_attn_arch.METRICS) if isinstance(metrics, str) and metrics == "all" else (
        [metrics] if isinstance(metrics, str) else list(metrics))
    known = _attn_arch.METRICS + _attn_arch.MODALITY_METRICS
    for m in names:
        if m not in known:
            _attn_arch.validate_parts([m])  # close matches for attn_* typos
            raise ValueError(f"{m!r} is not an attention metric; choose from {list(known)}.")
    enc = TransformerActivationEncoder(model, tokenizer, layers=layers, parts=names, heads=heads,
                                       token_pooling=query_reduction, **encoder_params)
    X = enc.fit_transform(list(texts))
    return metrics_frame(X, enc.layout_)


def metrics_frame(X, layout):
    """Tidy ``text, layer, head, metric, value`` frame of an array of attention metrics
    (``(n, layers, entries, 1)``, entries named ``attn_entropy.h3``)."""
    import pandas as pd

    n, L, P, _ = X.shape
    parts = [PartName.parse(p) for p in layout.parts]
    return pd.DataFrame({
        "text": np.repeat(np.arange(n), L * P),
        "layer": np.tile(np.repeat(np.asarray(layout.layers), P), n),
        "head": np.tile([p.head for p in parts], n * L),
        "metric": np.tile([p.part for p in parts], n * L),
        "value": np.asarray(X).reshape(-1).astype(float),
    })


def summarize_metrics(frame):
    """Mean and standard deviation over texts per metric, layer and head (a tidy frame).

    Examples
    --------
    >>> import pandas as pd
    >>> from embetter_plug.attention.patterns import summarize_metrics
    >>> frame = pd.DataFrame({"text": [0, 1, 0, 1], "layer": [0, 0, 0, 0], "head": [0, 0, 1, 1],
    ...                       "metric": ["attn_sink"] * 4, "value": [0.2, 0.4, 0.5, 0.7]})
    >>> summarize_metrics(frame)[["head", "mean"]].round(2).values.tolist()
    [[0.0, 0.3], [1.0, 0.6]]
    """
    out = frame.groupby(["metric", "layer", "head"], sort=True)["value"].agg(["mean", "std"])
    return out.reset_index()


def head_scores(frame, metric: str, *, value: str = "mean"):
    """A layer x head table of ``value`` for one ``metric``.

    ``frame`` has ``layer``, ``metric`` and either ``head`` (:func:`summarize_metrics` output)
    or ``part`` with per-head names such as ``attn_result.h3`` (``ProbeResults.summary()`` of
    per-head parts; with several token poolings, keep one pooling's rows first).

    Examples
    --------
    >>> import pandas as pd
    >>> from embetter_plug.attention.patterns import head_scores
    >>> summary = pd.DataFrame({"layer": [0, 0, 1, 1],
    ...                         "part": ["attn_result.h0", "attn_result.h1"] * 2,
    ...                         "metric": ["roc_auc"] * 4, "mean": [0.5, 0.9, 0.6, 0.7]})
    >>> head_scores(summary, "roc_auc").values.tolist()
    [[0.5, 0.9], [0.6, 0.7]]
    """
    frame = frame[frame["metric"] == metric]
    if frame.empty:
        raise ValueError(f"no rows for metric {metric!r}.")
    if "head" not in frame.columns:
        names = [PartName.parse(p) for p in frame["part"].astype(str)]
        poolings = {n.pooling for n in names if n.pooling is not None}
        if len(poolings) > 1:
            raise ValueError(f"the frame holds several token poolings {sorted(poolings)}; keep "
                             "one pooling's rows before making a layer x head table.")
        frame = frame.assign(head=[n.head for n in names]).dropna(subset=["head"])
        frame = frame.assign(head=frame["head"].astype(int))
        if frame.empty:
            raise ValueError("no per-head parts (named like 'attn_result.h3') in the frame.")
    return frame.pivot_table(index="layer", columns="head", values=value, aggfunc="mean")


def plot_head_heatmap(table, *, title: str = "", ax=None, cmap: str = "viridis"):
    """Draw a layer x head table (from :func:`head_scores`) as a heatmap; returns the axes.

    Examples
    --------
    >>> import pandas as pd
    >>> from embetter_plug.attention.patterns import plot_head_heatmap
    >>> table = pd.DataFrame([[0.5, 0.9], [0.6, 0.7]], index=[0, 1], columns=[0, 1])
    >>> plot_head_heatmap(table, title="roc_auc").get_ylabel()
    'layer'
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(1.5 + 0.45 * table.shape[1], 1.2 + 0.4 * table.shape[0]))
    im = ax.imshow(table.to_numpy(dtype=float), cmap=cmap, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax
