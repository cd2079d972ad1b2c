"""Streamed extraction: activations written to a folder shard by shard, resumable.

The folder holds one preallocated ``activations.npy`` plus ``manifest.json``. Shard ``k`` holds
rows ``k*shard_size`` to ``(k+1)*shard_size - 1`` in input order; the manifest records the shards
that are completely written (data flushed first, then the manifest replaced atomically):
``n_done`` counts the complete shards at the start, ``done_after`` lists complete shards beyond
them (written out of order by :mod:`embetter_plug.store.distributed`). Running the same extraction
again computes only the shards that are not complete.
:func:`embetter_plug.load_activations` opens the finished folder memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from .._constraints import POSITIVE_INT, StrOptions, validate_params
from .._progress import advance_to, overall
from .._utils import logger
from ._folder_lock import LOCK, check_not_in_use, folder_lock
from ..inputs.samples import check_inputs
from .io import (DATA, FORMAT, FORMAT_VERSION, MANIFEST, STORE_DTYPES, read_manifest,
                 atomic_write, check_storable)

__all__ = ["extract_to", "extraction_plan", "check_extraction_folder", "ShardWriter"]

# A new folder's shards close after whichever comes first (an interruption loses at most the
# shard in progress): about 64 MiB of activations, SHARD_ROWS rows, or about SHARD_SECONDS of
# work at the speed of the first forward pass.
SHARD_BYTES = 64 * 2**20
SHARD_ROWS = 256
SHARD_SECONDS = 60.0


def _foreign_files(folder: Path) -> list[str]:
    """Names in ``folder`` that an extraction did not write."""
    ours = (DATA, MANIFEST, f".{MANIFEST}.", LOCK)
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(ours))


def check_extraction_folder(folder, texts, *, store_dtype: str = "float32",
                            shard_size: int | None = None, overwrite: bool = False) -> dict | None:
    """What can be said about ``folder`` before a model loads; the unfinished or finished run
    there (its manifest) when the same texts and dtype can resume into it. ``shard_size=None``
    accepts the folder's shard size, as :func:`extract_to` adopts it.

    Raises a ``ValueError`` for a file, a folder of other files, or a different extraction
    (unless ``overwrite``). Layers, parts and the model are checked when writing starts.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; streamed extraction writes a folder (a "
                         "new or empty one, or one of an earlier run to resume).")
    check_not_in_use(folder)
    if not folder.is_dir() or overwrite:
        return None
    old = read_manifest(folder)
    if old is None:
        foreign = _foreign_files(folder)
        if foreign:
            raise ValueError(f"{str(folder)!r} exists and is not an extraction folder (it holds "
                             f"{foreign[:5]}); choose an empty or new folder.")
        return None
    wanted = {"texts_sha256": texts_digest(texts), "dtype": store_dtype}
    if shard_size is not None:
        wanted["shard_size"] = shard_size
    diff = sorted(k for k, v in wanted.items() if old.get(k) != v)
    if (old.get("shape") or [None])[0] != len(texts):
        diff.append("number of texts")
    if diff:
        raise ValueError(f"{str(folder)!r} already holds a different extraction (differs in "
                         f"{diff}); choose another folder or pass overwrite=True (--overwrite) "
                         "to replace it.")
    return old


def texts_digest(texts) -> str:
    """SHA-256 over the texts (length-prefixed), to recognise the same input on resume."""
    h = hashlib.sha256()
    for t in texts:
        b = str(t).encode("utf-8")  # a sample's content key (embetter_plug.inputs.samples)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def auto_shard_size(sample_shape, store_dtype: str, batch_size: int,
                    seconds_per_row: float | None = None) -> int:
    """Rows per shard for a new folder: at most about :data:`SHARD_BYTES` of activations,
    :data:`SHARD_ROWS` rows and (given ``seconds_per_row``) :data:`SHARD_SECONDS` of work; a
    multiple of ``batch_size`` (so every forward pass is full), at least one batch. Nothing
    depends on that multiple: a resumed run keeps the folder's own shard size whatever its batch
    size (:func:`resumable_shard_size`).
    """
    row = int(np.prod(sample_shape)) * np.dtype(store_dtype).itemsize
    rows = min(max(1, SHARD_BYTES // max(row, 1)), SHARD_ROWS)
    if seconds_per_row:
        rows = min(rows, int(SHARD_SECONDS / seconds_per_row))
    return max(batch_size, rows // batch_size * batch_size)


def resumable_shard_size(folder, plan: dict) -> int | None:
    """The shard size of the extraction in ``folder`` when it is the one ``plan`` describes.

    ``plan`` holds what identifies the result except the sharding (shape, dtype, texts digest,
    layout, model identity). Used when no shard size is asked for, so that a rerun with another
    batch size (the usual reaction to running out of memory) resumes instead of being refused.
    """
    folder = Path(folder)
    old = read_manifest(folder) if folder.is_dir() else None
    if old is None or any(old.get(k) != v for k, v in plan.items()):
        return None
    return int(old["shard_size"])


class ShardWriter:
    """Fills a preallocated ``activations.npy`` shard by shard, recording progress in a manifest.

    Use :meth:`open`, which starts a new folder or resumes a matching unfinished one.
    """

    def __init__(self, folder: Path, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest
        self._offset = int(manifest["data_offset"])
        self._row_bytes = int(np.prod(manifest["shape"][1:])) * np.dtype(manifest["dtype"]).itemsize

    @property
    def n_done(self) -> int:
        """Number of complete shards at the start (shards ``0 .. n_done - 1``)."""
        return int(self.manifest["n_done"])

    def complete_shards(self) -> set[int]:
        """Indices of every complete shard, those finished out of order included."""
        return set(range(self.n_done)) | set(self.manifest.get("done_after", []))

    def pending_shards(self) -> list[int]:
        """Indices of the shards still to compute, in order."""
        done = self.complete_shards()
        return [k for k in range(int(self.manifest["n_shards"])) if k not in done]

    def shard_rows(self, k: int) -> tuple[int, int]:
        s, n = self.manifest["shard_size"], self.manifest["shape"][0]
        return k * s, min(n, (k + 1) * s)

    @classmethod
    def open(cls, folder, plan: dict, *, overwrite: bool = False) -> "ShardWriter":
        """Resume ``folder`` if it holds the same unfinished (or finished) plan, else start it.

        ``plan`` holds everything that identifies the result (shape, dtype, shard size, texts
        digest, layout, model identity). A folder with a different plan is an error unless
        ``overwrite``.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{str(folder)!r} is a file; streamed extraction writes a folder.")
        old = read_manifest(folder) if folder.is_dir() and not overwrite else None
        if old is not None and not overwrite:
            same = {k: old.get(k) for k in plan} == plan and (folder / DATA).exists()
            if same and (folder / DATA).is_symlink():
                raise ValueError(
                    f"{str(folder / DATA)!r} is a symbolic link; a resumed extraction writes "
                    "only into the file it made, never through a link. Remove the link (or "
                    "pass overwrite=True to start over) and run again.")
            if same:
                logger.info("resuming %s: %d of %d shards already complete", folder,
                            old["n_done"], old["n_shards"])
                return cls(folder, old)
            diff = sorted(k for k in plan if old.get(k) != plan[k])
            raise ValueError(
                f"{str(folder)!r} already holds a different extraction (differs in {diff}); "
                "choose another folder or pass overwrite=True (--overwrite) to replace it."
            )
        foreign = _foreign_files(folder) if folder.is_dir() else []
        if foreign and not overwrite and old is None:
            raise ValueError(
                f"{str(folder)!r} exists and is not an extraction folder; choose an empty or new "
                "folder."
            )
        folder.mkdir(parents=True, exist_ok=True)
        for stale in (folder / MANIFEST, folder / DATA):
            if stale.exists():
                stale.unlink()
        # a sparse, preallocated .npy of the final shape; shards fill it in place
        tmp = folder / (DATA + ".tmp")
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=plan["dtype"],
                                       shape=tuple(plan["shape"]))
        offset = mm.offset
        del mm
        os.replace(tmp, folder / DATA)
        manifest = {**plan, "data_offset": int(offset), "n_done": 0}
        writer = cls(folder, manifest)
        writer._save_manifest()
        return writer

    def write_shard(self, k: int, acts: np.ndarray) -> None:
        """Write shard ``k``'s rows, flush them to disk, then mark the shard complete."""
        if not 0 <= k < self.manifest["n_shards"]:
            raise ValueError(f"shard {k} is out of range; the plan has {self.manifest['n_shards']} "
                             "shards.")
        lo, hi = self.shard_rows(k)
        acts = np.asarray(acts)
        if acts.shape != (hi - lo, *self.manifest["shape"][1:]):
            raise ValueError(f"shard {k} has shape {acts.shape}, expected {(hi - lo, *self.manifest['shape'][1:])}.")
        self.write_rows(lo, acts, where=f" in shard {k} (rows {lo}..{hi - 1})")
        self.mark_complete([k])

    def write_rows(self, lo: int, acts: np.ndarray, *, where: str = "") -> None:
        """Write ``acts`` into rows ``lo, lo + 1, ...`` (not flushed; see :meth:`mark_complete`).

        A value that ``store_dtype`` cannot hold is refused before anything is written.
        """
        done = len(self.complete_shards())
        check_storable(acts, self.manifest["dtype"], where=where,
                       fix=f" with overwrite=True (--overwrite); {done} of "
                           f"{self.manifest['n_shards']} shards were stored")
        acts = np.ascontiguousarray(acts, dtype=self.manifest["dtype"])
        with self._open_data() as f:
            f.seek(self._offset + lo * self._row_bytes)
            f.write(memoryview(acts).cast("B"))

    def _open_data(self):
        """The data file for writing, never through a symbolic link."""
        fd = os.open(self.folder / DATA, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        return os.fdopen(fd, "r+b")

    def flush(self) -> None:
        """Make the rows written so far durable (``fsync`` of the data file)."""
        with self._open_data() as f:
            os.fsync(f.fileno())

    def mark_complete(self, shards) -> None:
        """Flush the data file to disk, then record ``shards`` as complete in the manifest."""
        self.flush()
        done = self.complete_shards() | {int(k) for k in shards}
        n_done = self.n_done
        while n_done in done:
            n_done += 1
        self.manifest["n_done"] = n_done
        after = sorted(k for k in done if k > n_done)
        if after:
            self.manifest["done_after"] = after
        else:
            self.manifest.pop("done_after", None)
        self._save_manifest()

    def _save_manifest(self) -> None:
        atomic_write(self.folder / MANIFEST, json.dumps(self.manifest, indent=1).encode())


_STORE_CONSTRAINTS = {"shard_size": [None, POSITIVE_INT],
                      "store_dtype": [StrOptions(set(STORE_DTYPES))], "overwrite": ["boolean"]}


@validate_params(_STORE_CONSTRAINTS)
def extract_to(encoder, folder: str | os.PathLike, texts, *, shard_size: int | None = None,
               store_dtype: str = "float32", overwrite: bool = False) -> Path:
    """Encode ``texts`` with a fitted ``encoder`` into ``folder``, shard by shard, resumable.

    See :meth:`TransformerActivationEncoder.extract_to`, which calls this.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(encoder, "layout_")
    texts = check_inputs(texts, name="texts")
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"{str(folder)!r} is a file; streamed extraction writes a folder.")
    with folder_lock(folder):  # one writer at a time, from the plan to the last shard
        return _extract_locked(encoder, folder, texts, shard_size, store_dtype, overwrite)


def _extract_locked(encoder, folder, texts, shard_size, store_dtype, overwrite) -> Path:
    head = []  # the first forward pass, timed for a new folder's shard size, then stored

    def seconds_per_row() -> float:
        start = time.perf_counter()
        head.append(encoder.encode(texts[:encoder.batch_size]))
        return (time.perf_counter() - start) / len(head[0])

    plan = extraction_plan(encoder, folder, texts, shard_size=shard_size,
                           store_dtype=store_dtype, overwrite=overwrite,
                           seconds_per_row=seconds_per_row)
    writer = ShardWriter.open(folder, plan, overwrite=overwrite)
    pending = list(writer.pending_shards())
    done = len(texts) - sum(hi - lo for lo, hi in map(writer.shard_rows, pending))
    # one bar over all rows (not one per shard); a resumed run starts at the rows stored
    with overall(len(texts), initial=done, desc="encoding", unit="text",
                 disable=not encoder.verbose) as bar:
        for k in pending:
            lo, hi = writer.shard_rows(k)
            if head and lo == 0:  # the timed pass: rows 0 .. batch_size - 1 of shard 0
                first = head.pop()
                rest = texts[len(first):hi]
                acts = np.concatenate([first, encoder.encode(rest)]) if rest else first
            else:
                acts = encoder.encode(texts[lo:hi])
            writer.write_shard(k, acts)
            done += hi - lo
            advance_to(bar, done)  # rows read from a cache did not move the bar
            logger.info("shard %d/%d written (rows %d..%d)", k + 1, plan["n_shards"], lo, hi - 1)
    return Path(folder)


@validate_params(_STORE_CONSTRAINTS)
def extraction_plan(encoder, folder, texts: list[str], *, shard_size: int | None = None,
                    store_dtype: str = "float32", overwrite: bool = False,
                    seconds_per_row=None) -> dict:
    """What identifies the extraction of checked ``texts`` by a fitted ``encoder``: the manifest's
    plan for :meth:`ShardWriter.open` (shape, dtype, shard size, texts digest, layout, model).

    Without ``shard_size`` the shard size of a matching extraction in ``folder`` is kept (so a
    rerun with another batch size resumes), else :func:`auto_shard_size` picks it; a callable
    ``seconds_per_row`` (called only then) gives the speed that bounds a shard's time.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(encoder, "layout_")
    layout = encoder.layout_
    n = len(texts)
    plan = {
        "format": FORMAT, "version": FORMAT_VERSION, "shape": [n, *layout.shape],
        "dtype": store_dtype, "texts_sha256": texts_digest(texts), "layout": layout.to_dict(),
        "source": source_digest(encoder),
    }
    size = shard_size or (None if overwrite else resumable_shard_size(folder, plan)) \
        or auto_shard_size(layout.shape, store_dtype, encoder.batch_size,
                           seconds_per_row() if seconds_per_row is not None else None)
    plan.update(shard_size=size, n_shards=math.ceil(n / size))
    return plan


def source_digest(encoder) -> str:
    """SHA-256 of the fitted encoder's extraction identity (model, tokenizer, settings), as the
    model is now (:meth:`TransformerActivationEncoder.current_identity`)."""
    from ..extraction.identity import identity_digest

    return identity_digest(encoder.current_identity())
