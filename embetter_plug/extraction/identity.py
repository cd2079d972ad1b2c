"""One identity for "which model, which settings": what the cache, streamed extraction, the
cluster runner and the reload of a pickled encoder all key on.

The *load identity* of a model says which weights compute the vectors:

- the model: a hub name with its resolved commit (``revision=None`` follows ``main``, which
  moves: the commit the weights came from is recorded, not the branch name); for a local folder
  a fingerprint of its files; for a model object its config and a hash of the bytes of every
  parameter and buffer (weights an accelerate offload keeps on disk included), and of its
  adapters' state (:func:`weights_digest`), taken again at every ``transform`` that reads a
  cache;
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
           "processor_fingerprint", "tokenizer_fingerprint", "weights_digest", "check_cacheable"]

_VERSION = 3
# from_pretrained options that place or fetch the weights without changing what they compute
_PLACEMENT = {"device_map", "max_memory", "offload_folder", "offload_state_dict", "offload_buffers",
              "low_cpu_mem_usage", "cache_dir", "local_files_only", "token", "force_download",
              "proxies", "use_safetensors"}


def sha_digest(*parts: Any) -> str:
    """SHA-256 hex digest of ``parts`` (bytes as they are, anything else as its ``str``), each
    length-prefixed so that no two sequences of parts give the same input."""
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, (bytes, memoryview)) else str(p).encode()
        h.update(len(b if isinstance(b, bytes) else b.cast("B")).to_bytes(8, "little"))
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
    the same folder always gives a new identity. Objects hash their config and the bytes of
    every parameter and buffer (:func:`weights_digest`).
    """
    if source is not None and not os.path.isdir(source):
        commit = getattr(getattr(model, "config", None), "_commit_hash", None)
        return sha_digest("hub", source, commit or revision)
    if source is not None:
        parts: list[Any] = ["folder"]
        for path in sorted(Path(source).rglob("*")):
            if path.is_file():
                parts += [path.relative_to(source).as_posix(), *_file_identity(path)]
        return sha_digest(*parts)
    return sha_digest("object", type(model).__name__, model.config.to_json_string(use_diff=False),
                weights_digest(model))


def weights_digest(model) -> str:
    """SHA-256 over the bytes of every parameter and buffer of ``model`` (with their names,
    shapes and dtypes) and the state of its adapters.

    Exact: any change of any weight, in place or not, gives a new digest. Parameters that an
    accelerate offload keeps off the model (on the meta device between forwards, in memory or in
    an offload folder) are read from where accelerate keeps them. Tensors are hashed on a few
    threads (hashing releases the GIL), so the cost is about one read of the weights; see
    ``docs/cache.md`` for measured figures.

    Nothing is remembered between calls: an in-place write through ``.data`` or a NumPy view
    does not move a tensor's version counter, so only reading the bytes is exact.

    Examples
    --------
    >>> import torch
    >>> from embetter_plug.extraction.identity import weights_digest
    >>> from embetter_plug.testing import make_tiny_model
    >>> import copy
    >>> model = copy.deepcopy(make_tiny_model("gpt2")[0])  # a private copy to change
    >>> before = weights_digest(model)
    >>> model.h[0].mlp.c_fc.weight.data[:2] = 0
    >>> weights_digest(model) == before
    False
    """
    from concurrent.futures import ThreadPoolExecutor

    offloaded = _offloaded_tensors(model)
    named = [(f"p:{n}", t) for n, t in model.named_parameters()]
    named += [(f"b:{n}", t) for n, t in model.named_buffers()]

    def one(item) -> bytes:
        name, t = item
        if t.device.type == "meta":
            t = offloaded.get(name[2:], t)
        return sha_digest(name, tuple(t.shape), str(t.dtype), _tensor_bytes(t)).encode()

    workers = max(1, min(8, os.cpu_count() or 1, len(named)))
    with ThreadPoolExecutor(workers) as pool:
        digests = list(pool.map(one, named))
    return sha_digest("weights", *digests, json.dumps(_adapter_state(model), sort_keys=True))


def _tensor_bytes(t) -> Any:
    """The bytes of a tensor's values as a buffer (a marker for one without values)."""
    import torch

    if t.device.type == "meta":  # never loaded: nothing to read (the forward fails on its own)
        return b"meta"
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    try:
        return memoryview(t.view(torch.uint8).numpy())
    except (RuntimeError, TypeError):  # a tensor subclass without a plain byte view
        return t.float().numpy().tobytes()


def _offloaded_tensors(model) -> dict:
    """``{full name: tensor}`` of the tensors accelerate keeps off the model (offloaded to CPU
    memory or to disk: the module holds a meta tensor, its hook's ``weights_map`` the values)."""
    out: dict = {}
    for prefix, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            wmap = getattr(h, "weights_map", None)
            if wmap is None or not getattr(h, "offload", False):
                continue
            recurse = bool(getattr(h, "place_submodules", False))
            tensors = [*module.named_parameters(recurse=recurse),
                       *module.named_buffers(recurse=recurse)]
            for name, t in tensors:
                if t.device.type == "meta":
                    try:
                        out[f"{prefix}.{name}" if prefix else name] = wmap[name]
                    except KeyError:
                        pass
    return out


def _adapter_state(model) -> list:
    """Which adapters (PEFT's LoRA and kin) are active, disabled or merged, per module: the
    weights say what an adapter holds, not whether the forward uses it."""
    out = []
    for name, module in model.named_modules():
        if hasattr(module, "active_adapters") and hasattr(module, "disable_adapters"):
            if callable(getattr(type(module), "active_adapters", None)):
                continue  # transformers' model-level methods; the tuner layers say it all
            try:
                active = module.active_adapters
                active = [active] if isinstance(active, str) else list(active)
                state = [name, active, bool(module.disable_adapters),
                         list(getattr(module, "merged_adapters", []) or [])]
            except Exception:  # noqa: BLE001  (a model-level property that needs a loaded adapter)
                continue
            out.append(state)
    return out


def foreign_hooks(model, ours=()) -> list[str]:
    """Forward hooks on ``model`` (and global ones) that are not in ``ours`` (hook ids): what a
    weights identity cannot see, as ``"module path (kind)"``."""
    import torch.nn.modules.module as torch_module

    found = []
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(torch_module, kind, None):
            found.append(f"<every module> ({kind[8:]})")
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks"):
            ids = [i for i, fn in getattr(module, kind, {}).items()
                   if i not in ours and getattr(fn, "__module__", None) not in _OBSERVERS]
            if ids:
                found.append(f"{name or '<model>'} ({kind[1:]})")
    return found


# modules whose hooks only record outputs and never change them: transformers installs these
# for output_hidden_states / output_attentions and keeps them on the model
_OBSERVERS = {"transformers.utils.output_capturing"}


def check_cacheable(model, ours=()) -> None:
    """Raise a ``ValueError`` when ``model`` carries forward hooks (other than ``ours``, the
    ids of the encoder's own): they change the vectors without changing the weights, so cached
    vectors of the model without them would come back."""
    found = foreign_hooks(model, ours)
    if found:
        raise ValueError(
            f"cache= cannot be used while {type(model).__name__} has forward hooks that change "
            f"what it computes without changing its weights (on {found[:5]}"
            f"{' ...' if len(found) > 5 else ''}): vectors cached without them would come back. "
            "Remove the hooks (handle.remove()) before reading through the cache, or set "
            "cache=None for runs with hooks.")


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
    fp = sha_digest(type(tok).__name__, body, special)
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
    return sha_digest(type(processor).__name__, json.dumps(settings, sort_keys=True, default=str),
                tokenizer_fingerprint(tok) if tok is not None else "")


def load_identity(model, tokenizer, *, source: str | None, revision: str | None = None,
                  model_kwargs: dict | None = None, dtype: str = "float32",
                  processor=None) -> dict[str, Any]:
    """Which weights, loaded how, tokenized how: a JSON-serialisable dict.

    Examples
    --------
    >>> from embetter_plug.extraction.identity import load_identity
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
