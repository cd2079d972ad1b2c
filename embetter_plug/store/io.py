"""Save and load activation arrays with their layout.

Two on-disk forms, both read by :func:`load_activations`:

- a single ``.npz`` file (:func:`save_activations`): the array ``X`` and its layout as JSON. It is
  read with ``allow_pickle=False``, so loading a file from elsewhere never runs code.
- a folder written shard by shard while texts are encoded (:mod:`embetter_plug.store.streaming`, used
  by ``TransformerActivationEncoder.extract_to`` and ``embetter-plug extract``): one preallocated
  ``activations.npy`` plus ``manifest.json``. The finished folder opens as one memory-mapped
  array, so it is never loaded whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..layout import ActivationLayout

__all__ = ["save_activations", "load_activations"]

FORMAT = "embetter_plug.activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA = "activations.npy"
STORE_DTYPES = ("float32", "float16")


# ---------------------------------------------------------------------------- small helpers
def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers see either the old file or the complete new one, never a partial write; a process
    killed mid-write leaves only a ``*.tmp`` file behind. The file gets the permissions of any
    file the user creates (``0o666`` less the umask), not the temporary file's private ``0o600``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask: from ``/proc`` on Linux, else by setting it and putting it back."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_layout(layout: Any) -> ActivationLayout:
    if isinstance(layout, ActivationLayout):
        return layout
    if isinstance(layout, dict):
        return ActivationLayout.from_dict(layout)
    raise TypeError(f"layout must be an ActivationLayout or its dict, got {type(layout).__name__}.")


# ------------------------------------------------------------------------------ .npz files
def save_activations(path: str | os.PathLike, X: np.ndarray, layout: Any) -> Path:
    """Write activations and their layout to one ``.npz`` file (no pickle inside).

    Parameters
    ----------
    path : str or path
        File name; ``.npz`` is appended when missing.
    X : ndarray of shape (n_samples, n_layers, n_parts, hidden_size)
    layout : ActivationLayout or dict
        Usually the encoder's ``layout_``.

    Returns
    -------
    Path of the written file.

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import save_activations, load_activations
    >>> from embetter_plug.layout import ActivationLayout
    >>> lay = ActivationLayout(layers=(0, 1), parts=("resid_post",), hidden_size=4)
    >>> path = save_activations("acts.npz", np.ones((3, 2, 1, 4), np.float32), lay)
    >>> X, layout = load_activations(path)
    >>> X.shape, layout.layers
    ((3, 2, 1, 4), (0, 1))
    """
    layout = _as_layout(layout)
    X = np.asarray(X)
    layout.check(X)
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    np.savez(buf, X=X, layout=np.array(json.dumps(layout.to_dict())))
    atomic_write(path, buf.getvalue())
    return path


def load_activations(path: str | os.PathLike, *, mmap: bool = True) -> tuple[np.ndarray, ActivationLayout]:
    """Read activations written by :func:`save_activations` or by a streamed extraction.

    Parameters
    ----------
    path : str or path
        A ``.npz`` file, or a folder written by ``extract_to`` / ``embetter-plug extract``.
    mmap : bool, default=True
        For a folder: open the array memory-mapped (read-only) instead of reading it into
        memory. A ``.npz`` file is always read into memory.

    Returns
    -------
    X : ndarray (or read-only ``numpy.memmap``) of shape (n_samples, n_layers, n_parts, hidden)
    layout : ActivationLayout

    Raises
    ------
    FileNotFoundError
        When nothing is at ``path``.
    ValueError
        When a folder's extraction is unfinished (it says how many shards are done) or the file
        is not an activation file.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, mmap=mmap)
    if not path.exists():
        raise FileNotFoundError(
            f"no activations at {str(path)!r}: expected a .npz file from save_activations or a "
            "folder written by extract_to / `embetter-plug extract`."
        )
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{str(path)!r} is not a readable activation file: not a .npz archive (expected a "
            "file from save_activations or a folder from extract_to)."
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f or "layout" not in f:
                raise ValueError(
                    f"{str(path)!r} is a .npz file without 'X' and 'layout' entries; it was not "
                    "written by save_activations."
                )
            X = f["X"]
            layout = ActivationLayout.from_dict(json.loads(str(f["layout"])))
    except (OSError, EOFError) as exc:  # not a zip / truncated
        raise ValueError(f"{str(path)!r} is not a readable activation file: {exc}") from exc
    layout.check(X)
    return X, layout


_MANIFEST_KEYS = ("shape", "dtype", "n_done", "n_shards", "shard_size", "data_offset", "layout")


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, ``None`` when there is none; a ``ValueError`` naming the file when
    it is not one an extraction wrote whole (never a raw ``KeyError`` or ``JSONDecodeError``)."""
    path = Path(folder) / MANIFEST
    try:
        man = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        man = exc
    if isinstance(man, dict) and man.get("format") != FORMAT:
        return man  # someone else's manifest.json: the callers say it is not an extraction
    missing = ([k for k in _MANIFEST_KEYS if k not in man] if isinstance(man, dict)
               else ["(not a JSON object)"])
    if missing:
        why = f"not JSON ({man})" if isinstance(man, Exception) else f"lacks {missing}"
        raise ValueError(
            f"the manifest {str(path)!r} is damaged: {why}. Its rows cannot be trusted; write "
            "the extraction again with overwrite=True (--overwrite) or into a new folder.")
    return man


def _load_folder(folder: Path, *, mmap: bool):
    man = read_manifest(folder)
    if man is None or man.get("format") != FORMAT:
        raise ValueError(
            f"{str(folder)!r} is a folder without a {MANIFEST} from extract_to / "
            "`embetter-plug extract`; pass such a folder or a .npz file."
        )
    if man["n_done"] < man["n_shards"]:
        done = man["n_done"] + len(man.get("done_after", []))
        raise ValueError(
            f"the extraction in {str(folder)!r} is unfinished: {done} of "
            f"{man['n_shards']} shards are complete; run the same extraction again to resume."
        )
    X = np.load(folder / DATA, mmap_mode="r" if mmap else None, allow_pickle=False)
    layout = ActivationLayout.from_dict(man["layout"])
    layout.check(X)
    return X, layout


def check_storable(X: np.ndarray, store_dtype: str, where: str = "", fix: str = "") -> None:
    """Refuse to store ``X`` as ``store_dtype`` when a finite value is beyond its range.

    Casting float32 activations above 65504 to float16 gives ``inf`` without an error, and some
    models' activations go far beyond that. Checked before anything is written; ``where`` and
    ``fix`` complete the message (which rows, what else to change).
    """
    X = np.asarray(X)
    dtype = np.dtype(store_dtype)
    if X.size == 0 or dtype.kind != "f" or dtype.itemsize >= X.dtype.itemsize:
        return
    big = max(float(np.nanmax(X)), -float(np.nanmin(X)))  # no copy of X
    if not math.isfinite(big):  # inf or nan already in X: judge the finite values alone
        finite = X[np.isfinite(X)]
        big = float(np.abs(finite).max()) if finite.size else 0.0
    limit = float(np.finfo(dtype).max)
    if big > limit:
        raise ValueError(
            f"store_dtype={store_dtype!r} cannot hold these activations: the largest absolute "
            f"value{where} is {big:.7g}, above {store_dtype}'s maximum of {limit:g}, so it would "
            f"be stored as inf. Use store_dtype='float32' (--store-dtype float32){fix}."
        )
