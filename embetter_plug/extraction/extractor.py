"""The one extraction path: texts -> pooled activations, batch by batch.

:class:`ActivationExtractor` holds a loaded model and tokenizer and what to read (layers, parts,
token poolings, template, limits) and nothing else: it keeps no state between calls, so one
extractor serves any number of threads. Everything that turns texts into activations calls it:
the encoder's ``transform``, the activation cache (which wraps it), streamed extraction, online
probes and the cluster runner.

One text travels like this: it is tokenized with the prompt template in its chunk
(:mod:`embetter_plug.extraction.batching`), sorted by length into a batch, padded, sent to the device of the
model's input embeddings, and run through the model with the hooks of a
:class:`~embetter_plug.extraction.hooks.Capture` live; each hook pools its module's tokens at once
(:mod:`embetter_plug.extraction.token_pooling`) and the forward stops after the deepest module asked for.
The batch comes back as ``(row indices, float32 array (batch, n_layers, n_parts, hidden))``.

The loop (tokenizing, padding, positions, device, eval and inference mode, autocast) is the
same for every reading; a *sink* decides what a forward hands back: the pooled
:class:`~embetter_plug.extraction.hooks.Capture` by default, the ``S x S`` patterns of
:func:`embetter_plug.attention_patterns`. A sink is a context manager (hooks live while entered)
with ``run(forward, mask, *, input_ids, pool_mask, modalities, image_rows, image_units)``, which
calls ``forward()`` once and returns the batch's result (a tensor is yielded as a NumPy array).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..arch import blocks as _arch, heads as _attn_arch, vision as _vision
from . import batching as _batching
from .hooks import Capture
from .loading import input_device
from .token_pooling import pooling_name, split_modality
from ..layout import PartName
from ..inputs.samples import has_images

__all__ = ["ActivationExtractor", "input_device"]


@dataclass(frozen=True)
class ActivationExtractor:
    """Pooled activations of texts from a loaded model, without storing anything between calls.

    Parameters
    ----------
    model : transformers model
        Loaded and left as it is: never moved, its mode restored after each call.
    tokenizer : transformers tokenizer
    layers : sequence of int
        Block indices (non-negative).
    parts : sequence of str
        Canonical part names or module paths (see :mod:`embetter_plug.arch.blocks`), or per-head
        entries ``attn_z.h3`` (see :mod:`embetter_plug.arch.heads`).
    poolings : sequence of str or float
        Resolved token poolings (no ``"auto"``).
    max_length : int
        Token limit per text (template included).
    batch_size : int, default=32
    prompt_template : str or None, default=None
    include_prompt : bool, default=True
        When False, ``mean``/``max``/``min`` pool over the text's own tokens only (the template
        and the special tokens the tokenizer adds are left out), like sentence-transformers'
        ``include_prompt=False``.
    processor : transformers processor or None, default=None
        Turns image+text samples (:class:`~embetter_plug.inputs.samples.Sample`) into model inputs:
        the ``AutoProcessor`` of a vision-language model, the image processor of a vision
        encoder. Plain texts always go through ``tokenizer``.
    autocast_dtype : torch.dtype or None, default=None
        Run the forward under autocast to this dtype.
    warn_truncation : bool, default=True
        Warn (once per call site) when texts exceed ``max_length``; counts are always logged.
    verbose : bool, default=False
        A progress bar over batches.

    Examples
    --------
    >>> from embetter_plug.extraction.extractor import ActivationExtractor
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("gpt2")
    >>> ext = ActivationExtractor(model, tok, layers=[0, 2], parts=["resid_post"],
    ...                           poolings=["mean"], max_length=64)
    >>> [(idx.tolist(), acts.shape) for idx, acts in ext.iter_batches(["a b c", "d e"])]
    [([0, 1], (2, 2, 1, 32))]
    """

    model: Any
    tokenizer: Any
    layers: Sequence[int]
    parts: Sequence[str]
    poolings: Sequence[Any]
    max_length: int
    batch_size: int = 32
    prompt_template: str | None = None
    include_prompt: bool = True
    processor: Any = None
    autocast_dtype: Any = None
    warn_truncation: bool = True
    verbose: bool = False
    _targets: list = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # resolving module paths here makes a bad part fail before any text is read
        tower, parts = self._stack()
        if tower:
            targets = _vision.tower_targets(self.model, list(self.layers), parts)
        else:
            targets = _attn_arch.resolve_targets(self.model, list(self.layers), parts)
        object.__setattr__(self, "_targets", targets)

    def _images_alone(self) -> bool:
        """Whether samples are images alone run through a tower: a vision encoder, or the
        ``vision.`` parts of a dual encoder (CLIP, SigLIP)."""
        return _vision.is_vision_only(self.model) or (
            _vision.split_stack(self.parts)[0] and _vision.is_dual_encoder(self.model))

    def _stack(self) -> tuple[bool, list[str]]:
        """``(reads a vision tower, parts without the 'vision.' prefix)``."""
        tower, parts = _vision.split_stack(self.parts)
        return tower or _vision.is_vision_only(self.model), parts

    @property
    def hidden_size(self) -> int:
        """Width of each vector: the stack's hidden size, ``d_head`` for per-head
        ``attn_z``/``attn_q``/``attn_k``/``attn_v`` entries, 1 for attention metrics."""
        tower, parts = self._stack()
        return _attn_arch.part_width(_vision.stack_model(self.model, tower), parts)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one text's activations: ``(n_layers, n_parts * n_poolings, hidden)``."""
        return (len(self.layers), len(self.parts) * len(self.poolings), self.hidden_size)

    def part_names(self) -> list[str]:
        """Names along the part axis: ``part``, or ``part@pooling`` with several poolings
        (see :class:`~embetter_plug.layout.PartName`)."""
        return [p if len(self.poolings) == 1 else
                str(replace(PartName.parse(p), pooling=pooling_name(k)))
                for p in self.parts for k in self.poolings]

    def vector_names(self) -> list[str]:
        """``layer|part|pooling`` of each of the ``n_layers * n_parts`` vectors of one text, in
        the C order of :attr:`shape` (the activation cache stores vectors under these)."""
        return [f"{layer}|{part}|{pooling_name(k)}" for layer in self.layers
                for part in self.parts for k in self.poolings]

    def verify(self) -> None:
        """Check this reading on the model itself, as the encoder's ``fit`` does with
        ``verify=True`` (see ``docs/extraction.md``): one short text against the model's own
        hidden states and attention calls, and padded in a batch against the text alone.
        Raises ``embetter_plug.arch.verify.VerificationError`` (a ``ValueError``) on a
        disagreement.

        Examples
        --------
        >>> from embetter_plug.extraction.extractor import ActivationExtractor
        >>> from embetter_plug.testing import make_tiny_model
        >>> model, tok = make_tiny_model("gpt2")
        >>> ActivationExtractor(model, tok, layers=[0, 2], parts=["resid_post"],
        ...                     poolings=["mean"], max_length=64).verify()
        """
        from ..arch.verify import verify_extractor

        verify_extractor(self)

    # ------------------------------------------------------------------ extraction
    def extract(self, texts: Sequence[str],
                on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
        """``(n, n_layers, n_parts, hidden)`` float32 for ``texts``, in their order.

        ``on_batch(row_indices, activations)``, when given, sees each batch as it is done.
        """
        out = np.empty((len(texts), *self.shape), dtype=np.float32)
        for idx, acts in self._batches(texts, hold=True):
            out[idx] = acts
            if on_batch is not None:
                on_batch(idx, out[idx])
        return out

    def iter_batches(self, texts: Sequence[Any], *,
                     sink: Any = None) -> Iterator[tuple[np.ndarray, Any]]:
        """Yield ``(row_indices, activations)`` per batch, longest texts first per chunk.

        Texts are tokenized chunk by chunk (on CUDA the next chunk while the current one runs);
        image+text samples go through the processor one by one (see
        :mod:`embetter_plug.inputs.multimodal`). The loop body runs as the caller left things:
        inference mode, autocast, eval mode and the hooks are held only while a batch is
        computed, so a training step on the same model may run between batches.

        ``sink``, when given, receives each batch's forward instead of the pooled capture, and
        what its ``run`` returns is yielded in place of the activations (see the module's
        notes); ``layers``, ``parts`` and ``poolings`` then only serve the default sink.
        """
        return self._batches(texts, hold=False, sink=sink)

    def _capture(self) -> Capture:
        """The default sink: the pooled activations of :attr:`parts` in :attr:`layers`."""
        L, P, H = self.shape
        return Capture(self.model, self._targets, L, len(self.parts), self.poolings, H,
                       list(self.parts))

    def _batches(self, texts, *, hold: bool, sink=None):
        """:meth:`iter_batches`; ``hold`` keeps the forward's contexts across the yields (for a
        loop body of ours that runs no torch code). Every forward of an extraction runs here."""
        from .._progress import iterate

        texts = list(texts)
        self.check(texts)
        sink = self._capture() if sink is None else sink
        if has_images(texts) or self._images_alone():
            yield from self._iter_samples(texts, hold, sink)
            return
        prefix, suffix = _batching.split_template(self.prompt_template)
        plans = _batching.plan_chunks(self.tokenizer, texts, prefix, suffix, self.max_length,
                                      self.batch_size, spans=not self.include_prompt)
        device = input_device(self.model)
        if device.type in _batching.PREFETCH_ON:
            plans = _batching.prefetch(plans)

        def batches():
            seen = truncated = 0
            for plan in plans:
                seen += sum(len(b[0]) for b in plan.batches)
                if plan.n_truncated:  # said before that chunk runs; a warning only once
                    _batching.report_truncated(plan.n_truncated, seen, len(texts),
                                               self.max_length,
                                               warn=not truncated and self.warn_truncation)
                truncated += plan.n_truncated
                yield from plan.batches

        yield from iterate(self._run(batches(), device, sink, hold),  # or the caller's one bar
                           total=_batching.n_batches(len(texts), self.batch_size),
                           disable=not self.verbose, desc="encoding", unit="batch",
                           size=lambda batch: len(batch[0]))

    def check(self, inputs: Sequence[Any]) -> None:
        """Raise what is wrong with checked ``inputs`` (texts or samples) for these settings
        before any forward pass: images for a text model, texts for a vision encoder, no
        processor, placeholder counts, samples without an image for ``vision.`` parts,
        modality poolings on plain texts. Positions refer to ``inputs``."""
        from ..inputs import multimodal as _mm_batching

        tower, _ = self._stack()
        vision_only = self._images_alone()
        if not has_images(inputs) and not vision_only:
            modal = [pooling_name(p) for p in self.poolings if split_modality(p)[0] is not None]
            needs = [p for p in self.parts if _attn_arch.split_head(p)[0]
                     in _attn_arch.MODALITY_METRICS]
            if tower or modal or needs:
                what = (f"token_pooling {modal}" if modal else f"parts {needs[:3]}" if needs
                        else "'vision.' parts")
                raise ValueError(f"{what} read images, but the inputs are plain texts; pass "
                                 "image+text samples ({'text': ..., 'image': ...}).")
            return
        if not _vision.reads_images(self.model):
            with_image = [i for i, s in enumerate(inputs) if s.image is not None]
            if with_image:
                raise ValueError(
                    f"samples {with_image[:10]} hold images, but {type(self.model).__name__} "
                    "reads text only; pass a model that reads images (a vision-language model "
                    "or a vision encoder), or texts alone.")
            return self.check([s.text for s in inputs])
        if not has_images(inputs):  # texts given to a vision encoder
            raise ValueError(f"{type(self.model).__name__} is a vision encoder: pass images "
                             "(PIL images, arrays, {'image': path} dicts), not texts.")
        if _vision.is_dual_encoder(self.model) and not tower:
            raise ValueError(
                f"{type(self.model).__name__} encodes texts and images apart (a dual encoder): "
                "read its text stack from plain texts, and its image tower from images alone "
                "with 'vision.' parts (one encoder each).")
        if not self.include_prompt:
            raise ValueError("include_prompt=False applies to plain texts; image+text samples "
                             "are prompted by the processor. Pass include_prompt=True.")
        if self.processor is None:
            raise ValueError(f"image+text samples need a processor, and none was given for "
                             f"{type(self.model).__name__}; pass processor= (a name, folder or "
                             "AutoProcessor instance).")
        _mm_batching.check_samples(inputs, self.processor, vision_only=vision_only,
                                   prompt_template=self.prompt_template)
        no_image = [i for i, s in enumerate(inputs) if s.image is None]
        if tower and no_image:
            raise ValueError(f"'vision.' parts read each sample's image, but samples "
                             f"{no_image[:10]} have none; drop them or read the language stack.")
        many = [i for i, s in enumerate(inputs) if len(s.images) > 1]
        if tower and many:
            raise ValueError(f"'vision.' parts read one image per sample, but samples {many[:10]} "
                             "hold several; read the language stack's tokens of each image "
                             "instead (token_pooling='image0:mean', 'image1:mean' ...).")
        per_image = [p for p in self.poolings if (split_modality(p)[0] or "text")
                     not in ("text", "image")]
        if tower and per_image:
            raise ValueError(f"token_pooling {per_image}: 'vision.' parts read one image per "
                             "sample; use 'image:mean' (or read the language stack).")
        modal = [p for p in self.poolings if split_modality(p)[0] == "text"]
        if tower and modal:
            raise ValueError(f"token_pooling {modal}: a vision tower has no text tokens; use "
                             "'cls', 'mean' or 'image:mean' (patches without the class token).")

    def _iter_samples(self, samples, hold: bool, sink) -> Iterator[tuple[np.ndarray, Any]]:
        from ..inputs import multimodal as _mm_batching
        from .._progress import iterate

        if not _vision.reads_images(self.model):  # text-only samples (checked): their texts
            yield from self._batches([s.text for s in samples], hold=hold, sink=sink)
            return
        vision_only = self._images_alone()
        tokenizer = getattr(self.processor, "tokenizer", None) or self.tokenizer
        pad = 0 if vision_only else _batching.pad_id(tokenizer, self.model.config)
        processor = (getattr(self.processor, "image_processor", None) or self.processor
                     if vision_only else self.processor)
        batches = _mm_batching.plan_batches(
            processor, samples, self.batch_size, vision_only=vision_only,
            max_length=self.max_length, pad_id=pad, prompt_template=self.prompt_template,
            image_ids=self._per_image_ids())
        yield from iterate(self._run_samples(batches, vision_only, sink, hold),
                           total=-(-len(samples) // self.batch_size), disable=not self.verbose,
                           desc="encoding", unit="batch", size=lambda batch: len(batch[0]))

    def _per_image_ids(self) -> list[int]:
        """The image token ids, where a pooling reads one image of several (``image0:...``);
        else none, and no image is processed twice to count its tokens."""
        from ..inputs.multimodal import image_token_ids

        if all(split_modality(p)[0] in (None, "image", "text") for p in self.poolings):
            return []
        return image_token_ids(self.model, self.processor)

    def _forward_contexts(self, sink, device, hold: bool):
        """``(outer, inner)``: context factories for the whole loop and for each batch. The
        hooks (and eval mode), inference mode and autocast are live in one of them: around
        every forward, and across the yields too only when ``hold``."""
        import torch

        def live():
            stack = contextlib.ExitStack()
            stack.enter_context(sink)
            stack.enter_context(torch.inference_mode())
            if self.autocast_dtype is not None:
                stack.enter_context(torch.autocast(device.type, dtype=self.autocast_dtype))
            return stack

        return (live, contextlib.nullcontext) if hold else (contextlib.nullcontext, live)

    def _run_samples(self, batches, vision_only: bool, sink, hold: bool = True):
        """``(row_indices, activations)`` per ``(row_indices, model inputs, image rows, tower
        units per image)`` (see :func:`embetter_plug.inputs.multimodal.plan_batches`); the
        activations are what ``sink`` returns."""
        import torch

        from ..inputs.multimodal import image_masks, image_token_ids

        device = input_device(self.model)
        forward, extra = _vision.sample_forward(self.model, vision_only)
        dtype = next(self.model.parameters()).dtype
        image_ids = torch.tensor(image_token_ids(self.model, self.processor) or [-1],
                                 device=device)
        outer, inner = self._forward_contexts(sink, device, hold)
        with outer():
            for idx, inputs, with_image, units, counts in batches:
                inputs = {k: v.to(device, dtype=dtype if v.is_floating_point() else None)
                          for k, v in inputs.items()}
                if vision_only:
                    mask = torch.ones((len(idx), 1), dtype=torch.long, device=device)
                    modalities = None
                else:
                    mask = inputs["attention_mask"]
                    n_images = max([len(c) for c in counts if c is not None] + [1])
                    modalities = image_masks(inputs["input_ids"], image_ids, counts, n_images)
                rows = torch.as_tensor(with_image, device=device)
                with inner():
                    acts = sink.run(lambda: forward(**inputs, **extra), mask,
                                    input_ids=inputs.get("input_ids"), modalities=modalities,
                                    image_rows=rows,
                                    image_units=torch.as_tensor(units, device=device))
                    acts = _to_host(acts)
                yield idx, acts

    def _run(self, batches, device, sink, hold: bool = True):
        """``(row_indices, activations)`` per ``(row_indices, token ids[, spans])`` batch; the
        activations are what ``sink`` returns."""
        runner = _arch.runner(self.model)
        accepts_pos = _arch.takes_position_ids(self.model)
        extra = ({"use_cache": False} if "use_cache" in inspect.signature(runner.forward).parameters
                 else {})
        pad_id = _batching.pad_id(self.tokenizer, self.model.config)
        side = _arch.padding_side(self.model, getattr(self.tokenizer, "padding_side", "right"))
        outer, inner = self._forward_contexts(sink, device, hold)

        def prepare(batch, pin=False):
            idx, seqs = batch[0], batch[1]
            input_ids, mask, pos = _batching.pad_batch(seqs, pad_id, side)
            host = {"input_ids": input_ids, "attention_mask": mask}
            if accepts_pos:
                host["position_ids"] = pos
            if len(batch) > 2:
                host["pool_mask"] = _batching.span_mask(batch[2], mask, side)
            kwargs = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True)
                      for k, v in host.items()}
            return idx, kwargs, kwargs["attention_mask"]

        def run(kwargs, mask):
            pool_mask = kwargs.pop("pool_mask", None)
            with inner():
                return sink.run(lambda: runner(**kwargs, **extra), mask,
                                input_ids=kwargs["input_ids"], pool_mask=pool_mask)

        with outer():
            if device.type == "cuda":  # overlapped, pinned, one sync per batch (see _gpu)
                from . import _gpu

                yield from _gpu.overlapped_batches(prepare, run, batches, cuda=True)
                return
            for batch in batches:
                idx, kwargs, mask = prepare(batch)
                yield idx, _to_host(run(kwargs, mask))


def _to_host(result):
    """A sink's batch result as the loop yields it: a tensor as a NumPy array on the host."""
    return result.cpu().numpy() if hasattr(result, "cpu") else result
