"""One identity for "which model, which settings": what the cache, streamed extraction, the
cluster runner and the reload of a pickled encoder all key on.

The *load identity* of a model says which weights compute the vectors:

- the model: a hub name with its resolved commit (``revision=None`` follows ``main``, which
  moves: the commit the weights came from is recorded, not the branch name); for a local folder
  a fingerprint of its files; for a model object its config and a sample of every parameter;
- the ``model_kwargs`` given to ``from_pretrained`` (those that change the weights or the
  computation; placement options such as ``device_map`` are left out);
- the compute dtype and the tokenizer's vocabulary and rules.

The *extraction identity* adds the settings that change the vectors of a text: prompt template,
max length and whether the template is pooled (``include_prompt``). Layers, parts and token
pooling are not part of it: the cache stores each vector under its own name.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

__all__ = ["load_identity", "extraction_identity", "identity_digest", "model_fingerprint",
           "processor_fingerprint", "tokenizer_fingerprint"]

_VERSION = 2
# from_pretrained options that place or fetch the weights without changing what they compute
_PLACEMENT = {"device_map", "max_memory", "offload_folder", "offload_state_dict", "offload_buffers",
              "low_cpu_mem_usage", "cache_dir", "local_files_only", "token", "force_download",
              "proxies", "use_safetensors"}


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return f"{type(value).__module__}.{type(value).__name__}:{value!s}"


def canonical_kwargs(model_kwargs: dict | None) -> str:
    """``model_kwargs`` that change the vectors, as canonical JSON."""
    kept = {k: v for k, v in (model_kwargs or {}).items() if k not in _PLACEMENT}
    return json.dumps(kept, sort_keys=True, default=_jsonable)


def model_fingerprint(model, source: str | None, revision: str | None) -> str:
    """Identity of a model: hub name + resolved commit, a folder's files, or an object's weights.

    A folder's files up to 64 MiB are hashed whole. A larger (weight) file is hashed by 1,024
    evenly spaced blocks of 64 KiB and its modification time, so that saving new weights into
    the same folder always gives a new identity. Objects hash their config and up to 64 evenly
    spaced values of each parameter.
    """
    if source is not None and not os.path.isdir(source):
        commit = getattr(getattr(model, "config", None), "_commit_hash", None)
        return _sha("hub", source, commit or revision)
    if source is not None:
        parts: list[Any] = ["folder"]
        for path in sorted(Path(source).rglob("*")):
            if path.is_file():
                parts += [path.relative_to(source).as_posix(), *_file_identity(path)]
        return _sha(*parts)
    parts = ["object", type(model).__name__, model.config.to_json_string(use_diff=False)]
    for name, p in model.state_dict(keep_vars=False).items():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = flat[::step][:64].float().cpu().numpy().tobytes()
        parts += [name, tuple(p.shape), str(p.dtype), sample]
    return _sha(*parts)


_WHOLE = 64 * 2**20  # files up to this size are hashed whole
_BLOCK, _N_BLOCKS = 2**16, 1024
_FILE_IDS: dict[tuple, tuple] = {}  # per process: a file is read once while it is unchanged


def _file_identity(path: Path) -> tuple:
    """``(size, digest)`` of a small file; ``(size, mtime_ns, digest of sampled blocks)`` else."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if memo not in _FILE_IDS:
        _FILE_IDS[memo] = _read_identity(path, st)
    return _FILE_IDS[memo]


def _read_identity(path: Path, st) -> tuple:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= _WHOLE:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
            return st.st_size, h.hexdigest()
        step = max(st.st_size - _BLOCK, 0) / (_N_BLOCKS - 1)
        for k in range(_N_BLOCKS):  # the first and last blocks included
            f.seek(int(k * step))
            h.update(f.read(_BLOCK))
    return st.st_size, st.st_mtime_ns, h.hexdigest()


_TOKENIZER_FP: "weakref.WeakKeyDictionary[Any, tuple[int, str]]" = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tok) -> str:
    """Identity of a tokenizer: its vocabulary and rules (not its padding or truncation state)."""
    try:
        n, fp = _TOKENIZER_FP[tok]
        if n == len(tok):
            return fp
    except (KeyError, TypeError):
        pass
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        body = json.dumps(spec, sort_keys=True)
    else:
        body = json.dumps(sorted(tok.get_vocab().items()))
    special = json.dumps(getattr(tok, "special_tokens_map", {}), sort_keys=True, default=str)
    fp = _sha(type(tok).__name__, body, special)
    try:
        _TOKENIZER_FP[tok] = (len(tok), fp)
    except TypeError:
        pass
    return fp


def processor_fingerprint(processor) -> str:
    """Identity of a processor: its image settings (sizes, normalisation, ...), chat template
    and tokenizer."""
    settings = {}
    for name in ("image_processor", "video_processor"):
        sub = getattr(processor, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            settings[name] = sub.to_dict()
    if not settings and hasattr(processor, "to_dict"):  # an image processor on its own
        settings["self"] = processor.to_dict()
    for name in ("chat_template", "image_token", "num_image_tokens", "image_seq_length",
                 "patch_size", "num_additional_image_tokens", "vision_feature_select_strategy"):
        value = getattr(processor, name, None)
        if value is not None:
            settings[name] = value
    tok = getattr(processor, "tokenizer", None)
    return _sha(type(processor).__name__, json.dumps(settings, sort_keys=True, default=str),
                tokenizer_fingerprint(tok) if tok is not None else "")


def load_identity(model, tokenizer, *, source: str | None, revision: str | None = None,
                  model_kwargs: dict | None = None, dtype: str = "float32",
                  processor=None) -> dict[str, Any]:
    """Which weights, loaded how, tokenized how: a JSON-serialisable dict.

    Examples
    --------
    >>> from embetter_plug.identity import load_identity
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("gpt2")
    >>> a = load_identity(model, tok, source=None)
    >>> b = load_identity(model, tok, source=None, model_kwargs={"layer_norm_epsilon": 10})
    >>> a == b
    False
    """
    out = {"v": _VERSION, "model": model_fingerprint(model, source, revision),
           "model_kwargs": canonical_kwargs(model_kwargs), "dtype": dtype,
           "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None}
    if processor is not None:  # images: the keys of text-only runs stay as they were
        out["processor"] = processor_fingerprint(processor)
    return out


def extraction_identity(load: dict, *, prompt_template: str | None, max_length: int,
                        include_prompt: bool = True) -> dict[str, Any]:
    """The load identity plus the settings that change a text's vectors."""
    out = {**load, "prompt_template": prompt_template, "max_length": int(max_length)}
    if not include_prompt:  # the default leaves keys of earlier runs unchanged
        out["include_prompt"] = False
    return out


def identity_digest(identity: dict) -> str:
    """SHA-256 of an identity (canonical JSON)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
