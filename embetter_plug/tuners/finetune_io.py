"""A fitted :class:`~embetter_plug.tuners.TransformerTuner` as a folder, without pickle.

``config.json`` holds the parameters and fitted state, ``backbone/`` the transformer's own
configuration and the tokenizer, or a vision encoder's image processor (as ``save_pretrained``
writes them), and ``model.safetensors``
every weight of the tuned transformer and its head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

BACKBONE, WEIGHTS = "backbone", "model.safetensors"


def save_tuner(tuner, path: Path, header: dict, json_param) -> Path:
    """Write ``tuner`` into ``path``; ``header`` is the format record, ``json_param(key, value)``
    turns a parameter into JSON (``None`` where it cannot)."""
    from safetensors.torch import save_model

    from ..extraction.loading import hf_progress

    classes = tuner.classes_
    params = {k: (None if k in ("model", "tokenizer", "processor") and not isinstance(v, (str, type(None)))
                  else json_param(k, v)) for k, v in tuner.get_params(deep=False).items()}
    config = {**header, "params": params, "fitted": {
        "classes": classes.tolist(),
        "classes_dtype": "object" if classes.dtype == object else classes.dtype.str,
        "pooling": tuner.pooling_, "autocast": tuner.autocast_,
        "hidden_size": int(tuner.hidden_size_), "best_epoch": int(tuner.best_epoch_),
        "n_epochs": int(tuner.n_epochs_), "inputs": tuner.inputs_,
    }}
    text = json.dumps(config, indent=2)  # fails before anything is written
    path.mkdir(parents=True, exist_ok=True)
    backbone = tuner.net_.module_.backbone
    with hf_progress(False):
        backbone.config.save_pretrained(path / BACKBONE)
        (tuner.processor_ if tuner.inputs_ == "images" else tuner.tokenizer_).save_pretrained(
            path / BACKBONE)
    extra = {"attn_implementation": backbone.config._attn_implementation}
    (path / BACKBONE / "embetter_plug.json").write_text(json.dumps(extra))
    save_model(tuner.net_.module_, str(path / WEIGHTS))  # tied weights stored once
    (path / "config.json").write_text(text)
    return path


def load_tuner(cls, path: Path, config: dict, device: Any):
    """The tuner saved in ``path`` (``config``: its ``config.json``, already read)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    params = dict(config["params"])
    if device is not None:
        params["device"] = device
    tuner = cls(**params)
    fitted = config["fitted"]
    dtype = object if fitted["classes_dtype"] == "object" else np.dtype(fitted["classes_dtype"])
    tuner.classes_ = np.asarray(fitted["classes"], dtype=dtype)
    tuner.pooling_, tuner.autocast_ = fitted["pooling"], fitted["autocast"]
    tuner.hidden_size_ = fitted["hidden_size"]
    tuner.best_epoch_, tuner.n_epochs_ = fitted["best_epoch"], fitted["n_epochs"]
    tuner.validation_indices_ = None
    tuner.inputs_ = fitted.get("inputs", "texts")
    folder = path / BACKBONE
    model_config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    tuner.tokenizer_ = tuner.processor_ = None
    if tuner.inputs_ == "images":
        tuner.processor_ = AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
    else:
        tuner.tokenizer_ = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    extra = json.loads((folder / "embetter_plug.json").read_text())
    weights = load_file(str(path / WEIGHTS))
    tuner._restore(model_config, weights, extra.get("attn_implementation"))
    return tuner


def pickle_state(tuner) -> dict:
    """The tuner's ``__dict__`` for pickling: the weights (CPU tensors) and the model's
    configuration instead of the transformers model object (which does not pickle)."""
    state = tuner.__dict__.copy()
    net = state.pop("net_", None)
    if net is not None:
        config = net.module_.backbone.config
        state["_config"] = {**config.to_dict(), "_attn_implementation": config._attn_implementation}
        state["_weights"] = {k: v.detach().cpu() for k, v in net.module_.state_dict().items()}
    return state


def unpickle_state(tuner, state: dict) -> None:
    """:func:`pickle_state`'s inverse (a state pickled before image inputs reads texts)."""
    config, weights = state.pop("_config", None), state.pop("_weights", None)
    state.setdefault("inputs_", "texts")
    tuner.__dict__.update(state)
    if config is not None:
        from transformers import AutoConfig

        attn = config.pop("_attn_implementation", None)
        tuner._restore(AutoConfig.for_model(**config), weights, attn)
