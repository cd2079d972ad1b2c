"""ActivationCache: a content-addressed on-disk store of pooled activation vectors.

One entry per (model identity, extraction settings, text) holds one vector per
``(layer, part, token pooling)`` computed so far, so asking later for other layers or poolings of
the same texts adds vectors to the entry instead of starting over, and asking for a subset reads
everything from disk.

The key of an entry is a SHA-256 over the encoder's extraction identity
(:mod:`embetter_plug.extraction.identity`: the model — hub name and resolved commit, a folder's files or an
object's weights —, the ``model_kwargs`` that change it, the compute dtype, the tokenizer, the
prompt template, max length and ``include_prompt``) and the text.

Each entry file ends with a BLAKE2b checksum of its content and is written through a temporary
file and ``os.replace``: readers (any number, in any process) see a whole entry or none, a killed
writer leaves only a ``*.tmp`` file, and a damaged entry is reported, removed and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .._utils import logger, warn_user
from ..extraction.identity import sha_digest, model_fingerprint  # noqa: F401  (model_fingerprint: re-exported)
from .io import atomic_write

__all__ = ["ActivationCache", "default_cache_dir"]

_MAGIC = b"EPCACHE1"
_DIGEST = 16
_SUFFIX = ".act"


def default_cache_dir() -> Path:
    """``$EMBETTER_PLUG_CACHE``, else ``$XDG_CACHE_HOME/embetter_plug`` (``~/.cache/embetter_plug``)."""
    env = os.environ.get("EMBETTER_PLUG_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "embetter_plug"


class ActivationCache:
    """An on-disk store of activation vectors keyed by model, settings and text.

    Pass it (or just a folder) as ``cache=`` to :class:`~embetter_plug.TransformerActivationEncoder`:
    ``transform`` then reads what is stored and runs the model only on the missing texts.

    Parameters
    ----------
    path : str, path or None, default=None
        Folder of the store (created on first write). ``None`` uses :func:`default_cache_dir`.

    Examples
    --------
    >>> import tempfile
    >>> from embetter_plug import ActivationCache, TransformerActivationEncoder
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("gpt2")
    >>> cache = ActivationCache(tempfile.mkdtemp())
    >>> enc = TransformerActivationEncoder(model, tok, cache=cache).fit()
    >>> X = enc.transform(["a first text", "a second text", "a first text"])
    >>> cache.info()["n_entries"]
    2
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else default_cache_dir()
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"cache folder {str(path)!r} is a file; pass a folder (it is created "
                             "when the first entry is stored).")

    def __repr__(self) -> str:
        return f"ActivationCache({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ActivationCache) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ------------------------------------------------------------------ entries
    @property
    def _root(self) -> Path:
        return self.path / "entries"

    def _file(self, key: str) -> Path:
        return self._root / key[:2] / f"{key}{_SUFFIX}"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The vectors stored under ``key`` (``{name: 1-D float32}``), or ``None``.

        A damaged entry (bad checksum, truncated) is reported with a warning, removed and
        treated as missing, so it is recomputed.
        """
        path = self._file(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            header, data = _decode(raw)
        except ValueError as exc:
            msg = f"activation cache entry {path} is damaged ({exc}); it will be recomputed."
            logger.warning(msg)
            warn_user(msg, RuntimeWarning)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            return None
        return dict(zip(header["names"], data))

    def put(self, key: str, vectors: dict[str, np.ndarray], *, label: str = "") -> None:
        """Store ``vectors`` (``{name: 1-D array}``, any lengths: a residual vector and a
        head's ``attn_z`` live side by side) under ``key``, atomically."""
        names = list(vectors)
        flat = [np.asarray(vectors[n], dtype=np.float32).reshape(-1) for n in names]
        data = np.concatenate(flat) if flat else np.zeros(0, np.float32)
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, _encode({"names": names, "label": label,
                                    "widths": [len(v) for v in flat]}, data))

    def _entry_files(self) -> Iterator[Path]:
        if self._root.is_dir():
            yield from self._root.glob(f"*/*{_SUFFIX}")

    def _temp_files(self) -> Iterator[Path]:
        if self._root.is_dir():
            yield from self._root.glob("*/.*.tmp")

    def entries(self) -> list[dict[str, Any]]:
        """One dict per stored entry: ``path``, ``label`` (the model), ``n_vectors``, ``size``, ``ok``."""
        out = []
        for path in self._entry_files():
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # removed by another process while listing
                continue
            try:
                header, data = _decode(raw)
                out.append({"path": str(path), "label": header.get("label", ""),
                            "n_vectors": len(data), "size": len(raw), "ok": True})
            except ValueError:
                out.append({"path": str(path), "label": "?", "n_vectors": 0, "size": len(raw),
                            "ok": False})
        return out

    def info(self) -> dict[str, Any]:
        """Summary: ``path``, ``n_entries``, ``n_vectors``, ``size_bytes``, ``n_damaged``,
        ``n_temp`` (left by killed writers) and entries per model ``labels``."""
        entries = self.entries()
        labels: dict[str, int] = {}
        for e in entries:
            labels[e["label"]] = labels.get(e["label"], 0) + 1
        temps = list(self._temp_files())
        return {
            "path": str(self.path), "n_entries": len(entries),
            "n_vectors": sum(e["n_vectors"] for e in entries),
            "size_bytes": sum(e["size"] for e in entries) + sum(p.stat().st_size for p in temps),
            "n_damaged": sum(not e["ok"] for e in entries), "n_temp": len(temps),
            "labels": labels,
        }

    def size(self) -> int:
        """Bytes on disk (entries and leftover temporary files)."""
        return self.info()["size_bytes"]

    def __len__(self) -> int:
        return sum(1 for _ in self._entry_files())

    def clear(self) -> int:
        """Remove every entry and leftover temporary file; return how many entries were removed."""
        n = 0
        for path in list(self._entry_files()):
            path.unlink(missing_ok=True)
            n += 1
        for path in list(self._temp_files()):
            path.unlink(missing_ok=True)
        if self._root.is_dir():
            for sub in self._root.iterdir():
                if sub.is_dir() and not any(sub.iterdir()):
                    sub.rmdir()
        return n


def _encode(header: dict, data: np.ndarray) -> bytes:
    h = json.dumps({**header, "shape": list(data.shape)}).encode()
    body = _MAGIC + len(h).to_bytes(4, "little") + h + data.astype("<f4").tobytes()
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


def _decode(raw: bytes) -> tuple[dict, np.ndarray]:
    if len(raw) < len(_MAGIC) + 4 + _DIGEST or not raw.startswith(_MAGIC):
        raise ValueError("not an entry or truncated")
    body, digest = raw[:-_DIGEST], raw[-_DIGEST:]
    if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
        raise ValueError("checksum mismatch")
    n = int.from_bytes(body[8:12], "little")
    try:  # a header written by something else: reported as damaged, never a raw KeyError
        header = json.loads(body[12:12 + n])
        data = np.frombuffer(body[12 + n:], dtype="<f4").reshape(header["shape"])
        data = data.astype(np.float32)
        if "widths" in header:  # vectors of several widths, one after the other
            data = np.split(data, np.cumsum(header["widths"])[:-1]) if header["widths"] else []
        if len(header["names"]) != len(data):
            raise ValueError(f"{len(header['names'])} names for {len(data)} vectors")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"malformed header ({type(exc).__name__}: {exc})") from None
    return header, data


# ------------------------------------------------------------------ reading through the cache
def encoder_identity(enc) -> dict[str, Any]:
    """The extraction identity of a fitted encoder as its model is now (see
    :meth:`TransformerActivationEncoder.current_identity`)."""
    return enc.current_identity(cache=True)


def as_cache(cache) -> ActivationCache:
    """``cache=`` parameter (folder or ``ActivationCache``) -> ``ActivationCache``."""
    if isinstance(cache, ActivationCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return ActivationCache(cache)
    raise TypeError(
        f"cache must be None, a folder or an ActivationCache, got {type(cache).__name__}."
    )


def read_through(cache, extractor, identity: dict, texts: list[str], *,
                 label: str = "") -> np.ndarray:
    """Activations of distinct ``texts``: stored ones from ``cache``, the rest from ``extractor``.

    ``extractor`` is an :class:`~embetter_plug.extraction.extractor.ActivationExtractor`; ``identity`` its
    extraction identity (:func:`embetter_plug.extraction.identity.extraction_identity`). Every batch the
    extractor computes is added to the cache as soon as it is done (merged with whatever other
    layers/parts each entry already holds), so an interrupted run keeps the batches it finished.
    """
    cache = as_cache(cache)
    ident = json.dumps(identity, sort_keys=True)
    names = extractor.vector_names()
    L, P, H = extractor.shape
    out = np.empty((len(texts), L, P, H), dtype=np.float32)
    keys = [sha_digest(ident, t) for t in texts]
    missing, stored = [], {}
    for i, key in enumerate(keys):
        entry = cache.get(key)
        if entry is not None and all(n in entry and len(entry[n]) == H for n in names):
            out[i] = np.stack([entry[n] for n in names]).reshape(L, P, H)
        else:
            missing.append(i)
            stored[i] = entry or {}
    logger.info("activation cache %s: %d of %d text(s) found, %d to compute", cache.path,
                len(texts) - len(missing), len(texts), len(missing))

    def store(rows, acts):
        for j, a in zip(rows, acts):
            i = missing[j]
            merged = dict(stored.pop(i))  # vectors of other widths (parts) stay
            merged.update(zip(names, a.reshape(L * P, H)))
            cache.put(keys[i], merged, label=label)

    if missing:
        out[missing] = extractor.extract([texts[i] for i in missing], on_batch=store)
    return out
