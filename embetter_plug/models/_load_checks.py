"""What a loaded pipeline may ask of ``from_pretrained``: every estimator reachable in it is
found (steps, transformer lists, meta-estimators' parameters and fitted attributes, at any
depth), and none may turn on remote code or pass loading settings that run code or change where
code and weights come from, unless the caller allows it.

An encoder's ``model_kwargs`` go to ``AutoModel.from_pretrained``. From a file, only a small
allow-list of placement and precision settings is taken as is; keys that are themselves
settings of ``from_pretrained`` or of its config loader (``trust_remote_code``,
``code_revision``, ``weights_only``, ``use_kernels``, ``gguf_file``, ``subfolder`` ...) are
refused, and any other key (a config override such as ``layer_norm_epsilon=1e-5``) must hold
a plain number or bool.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

_DTYPES = {None, "auto", "float32", "float16", "bfloat16", "float64", "torch.float32",
           "torch.float16", "torch.bfloat16", "torch.float64"}
#: attention kernels of transformers itself (a hub name here would download and run a kernel)
_ATTENTION = {None, "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"}


def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


def _placement(v) -> bool:  # "auto", "cpu", "cuda:0", or {"module": device}
    if v is None or isinstance(v, str):
        return True
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(d, (int, str))
                                       and not _is_bool(d) for k, d in v.items())


def _memory(v) -> bool:  # {0: "10GiB", "cpu": "30GiB"}
    return isinstance(v, dict) and all(isinstance(k, (int, str)) and isinstance(m, (int, str))
                                       for k, m in v.items())


#: model_kwargs taken from a file as they are, each with the values it may hold
ALLOWED: dict[str, Any] = {
    "dtype": lambda v: v in _DTYPES, "torch_dtype": lambda v: v in _DTYPES,
    "device_map": _placement, "max_memory": _memory,
    "attn_implementation": lambda v: v in _ATTENTION,
    "use_safetensors": lambda v: v is None or v is True,
    **{k: _is_bool for k in ("low_cpu_mem_usage", "local_files_only", "ignore_mismatched_sizes",
                             "offload_buffers", "disable_mmap", "output_attentions",
                             "output_hidden_states", "use_cache")},
}
#: settings of from_pretrained, the auto classes and the config loader (transformers 5): from a
#: file these run code, load another format or change where code or weights come from
LOADER_KEYS = frozenset({
    "_commit_hash", "_configuration_file", "_from_auto", "_from_pipeline", "adapter_kwargs",
    "adapter_name", "allow_all_kernels", "cache_dir", "code_revision", "config", "device_mesh",
    "distributed_config", "experts_implementation", "force_download", "from_flax", "from_tf",
    "fusion_config", "generation_config", "gguf_file", "kernel_config", "kernels_mode",
    "key_mapping", "model_args", "offload_folder", "offload_state_dict", "output_loading_info",
    "pretrained_model_name_or_path", "proxies", "quantization_config", "resume_download",
    "revision", "state_dict", "subfolder", "token", "tp_plan", "tp_size", "tqdm_class",
    "trust_remote_code", "use_auth_token", "use_kernels", "variant", "weights_only",
})
#: what remote code needs besides the flag; allowed with trust_remote_code=True
_REMOTE = {"trust_remote_code", "code_revision"}


def reachable_estimators(obj) -> Iterator[Any]:
    """Every object with ``get_params`` reachable from ``obj``: parameters, fitted attributes
    (``best_estimator_``, ``transformers_`` ...), and lists, tuples, dicts and object arrays of
    them, at any depth (each object once)."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None or isinstance(o, (str, bytes, int, float, type)):
            continue
        seen.add(id(o))
        if isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, np.ndarray):
            if o.dtype == object:
                stack.extend(o.ravel().tolist())
        elif callable(getattr(o, "get_params", None)) and not isinstance(o, type):
            yield o
            try:
                stack.extend(o.get_params(deep=False).values())
            except Exception:  # noqa: BLE001 - a broken get_params still has attributes
                pass
            stack.extend(getattr(o, "__dict__", {}).values())


def model_kwargs_problem(kwargs: Any, *, remote_code: bool, allowed: set[str]) -> str | None:
    """What is refused in an encoder's ``model_kwargs`` read from a file, or None."""
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict):
        return f"model_kwargs is a {type(kwargs).__name__}, not a dict"
    bad = []
    for key, value in kwargs.items():
        if not isinstance(key, str):
            bad.append(f"{key!r} (not a name)")
        elif key in _REMOTE:
            if not remote_code:
                bad.append(f"{key}={value!r}")
        elif key in allowed:
            continue
        elif key in ALLOWED:
            if not ALLOWED[key](value):
                bad.append(f"{key}={value!r}")
        elif key in LOADER_KEYS:
            bad.append(f"{key}={value!r}")
        elif not (isinstance(value, (int, float, np.integer, np.floating)) or _is_bool(value)):
            bad.append(f"{key}={value!r} (a config override may hold a number or bool only)")
    return ", ".join(bad) or None


def check_loaded(est, path, *, trust_remote_code: bool, allowed_model_kwargs) -> None:
    """Refuse a loaded estimator that would run a model's own code, or pass loading settings
    that nobody allowed, anywhere inside it (see module)."""
    allowed = set(allowed_model_kwargs or [])
    for o in reachable_estimators(est):
        try:
            params = o.get_params(deep=False)
        except Exception:  # noqa: BLE001
            params = {}
        where = f"{type(o).__name__} (model {params.get('model')!r})"
        if params.get("trust_remote_code") and not trust_remote_code:
            raise ValueError(
                f"the estimator in {path} holds a {where} with trust_remote_code=True, which "
                "runs that model's own code when it loads; pass load_model(..., "
                "trust_remote_code=True) only if you trust both.")
        problem = model_kwargs_problem(params.get("model_kwargs"), remote_code=trust_remote_code,
                                       allowed=allowed)
        if problem:
            raise ValueError(
                f"the estimator in {path} holds a {where} whose model_kwargs ask from_pretrained "
                f"for {problem}; from a file, such settings could run code or load from "
                f"elsewhere. Taken as they are: {sorted(ALLOWED)} and config overrides with "
                "number or bool values. If you trust the file, allow the keys with "
                "load_model(..., model_kwargs_allowed=[...])"
                + (" (remote code also needs trust_remote_code=True)"
                   if set(_kwargs_keys(params)) & _REMOTE else "") + ".")


def _kwargs_keys(params: dict) -> list:
    kw = params.get("model_kwargs")
    return list(kw) if isinstance(kw, dict) else []
