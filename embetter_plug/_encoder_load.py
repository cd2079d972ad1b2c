"""What a :class:`~embetter_plug.TransformerActivationEncoder` loads in ``fit``: model, tokenizer,
processor and compute dtype, each checked as early as it can be.

For a model given by name or folder the configuration comes first (a layer out of range fails
before any weights load), then the processor and tokenizer (cheap), then the weights. A vision
encoder has no tokenizer; a vision-language model takes its tokenizer from its processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .arch import blocks as _arch, vision as _vision
from .extraction.loading import (load_config, load_model, load_processor, load_tokenizer,
                                 place_model)
from ._utils import resolve_device, resolve_dtype

__all__ = ["Loaded", "load_for"]


@dataclass(frozen=True)
class Loaded:
    """The loaded model and what goes with it."""

    model: Any
    tokenizer: Any
    processor: Any
    device: Any
    autocast_dtype: Any
    compute_dtype: str


def load_for(params, source: str | None, check_layers: Callable[[int], Any]) -> Loaded:
    """Load what an encoder with parameters ``params`` (the estimator: its public parameters
    are read) needs; ``source`` is the resolved name/folder, ``None`` for a model instance;
    ``check_layers(n_blocks)`` raises for layers out of range."""
    hub = dict(revision=params.revision, trust_remote_code=params.trust_remote_code)
    if source is None:
        model = params.model
        device, dtype = place_model(model, params.device, params.dtype)
        processor = _processor(params, model, None, hub)
        tok = _tokenizer(params, model, None, processor, hub)
    else:
        device = resolve_device(params.device)
        dtype = resolve_dtype(params.dtype, device)
        config = load_config(source, **hub)
        tower = _vision.split_stack(params.parts)[0]
        if not tower and not set(params.model_kwargs or {}) & {"config", "num_hidden_layers",
                                                                "n_layer"}:
            n = _arch.config_n_blocks(config)
            if n is not None:
                check_layers(n)
        processor = _processor(params, config, source, hub)
        tok = _tokenizer(params, config, source, processor, hub)
        model, device = load_model(source, dtype=dtype, device=device,
                                   model_kwargs=params.model_kwargs, verbose=params.verbose, **hub)
    param_dtype = next(model.parameters()).dtype
    # a loaded model is already in ``dtype``; a given model runs under autocast when a
    # half-precision dtype was asked for (or is "auto" on a bf16-capable GPU)
    half = str(dtype) in ("torch.bfloat16", "torch.float16")
    autocast = dtype if (dtype != param_dtype and half) else None
    return Loaded(model, tok, processor, device, autocast,
                  str(autocast or param_dtype).replace("torch.", ""))


def _processor(params, model_or_config, source, hub):
    """The processor of a model that reads images (``None`` for a text model)."""
    reads = _vision.reads_images(model_or_config)
    if not reads:
        if params.processor is not None:
            raise ValueError(f"processor={params.processor!r} was given, but the model reads "
                             "text only; drop processor= or pass a model that reads images.")
        return None
    model = model_or_config if hasattr(model_or_config, "forward") else None
    return load_processor(params.processor, model, source, required=reads == "vision", **hub)


def _tokenizer(params, model_or_config, source, processor, hub):
    """The tokenizer: given, the processor's, or the model's own; none for a vision encoder."""
    if _vision.reads_images(model_or_config) == "vision" and params.tokenizer is None:
        return None
    if params.tokenizer is None and getattr(processor, "tokenizer", None) is not None:
        tok = processor.tokenizer
    else:
        model = model_or_config if hasattr(model_or_config, "forward") else None
        tok = load_tokenizer(params.tokenizer, model, source, **hub)
    if not params.include_prompt and not getattr(tok, "is_fast", True):
        raise ValueError(
            f"include_prompt=False needs a fast tokenizer (to tell the text's tokens from the "
            f"template's), but {type(tok).__name__} is a slow one; pass a fast tokenizer "
            "(AutoTokenizer.from_pretrained(..., use_fast=True)) or include_prompt=True."
        )
    return tok
