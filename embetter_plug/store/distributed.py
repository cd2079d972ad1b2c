"""Extraction on a Ray cluster: a pool of model-holding actors fills a streamed-extraction folder.

The driver plans the shards exactly as :func:`embetter_plug.store.streaming.extract_to` does (same
folder format, same manifest, same identity), sends the rows of the shards that are not complete
through Ray Data's ``map_batches`` to a pool of actors that each load the model once, and writes
every returned block into its rows. A shard is recorded as complete once all its rows are on disk
(blocks may arrive in any order), so a driver that dies keeps every finished shard and a rerun
computes only the others. :func:`embetter_plug.load_activations` opens the result.

Ray is imported only here, and only when used: ``pip install "embetter_plug[ray]"``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

from ._cluster_inputs import _blocks, _read_inputs, _samples_of
from .._constraints import NON_NEGATIVE_REAL, POSITIVE_INT, StrOptions, validate_params
from .io import STORE_DTYPES
from .._utils import logger

__all__ = ["extract_distributed", "connect_ray"]

INSTALL = 'pip install "embetter_plug[ray]"'


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"extraction on a Ray cluster needs Ray Data, which is not installed "
                          f"({exc}); install it with: {INSTALL}") from exc
    return ray


def ray_log_level() -> int:
    """Ray's own log level: its notices (token authentication, progress bars off, execution
    plans) show with this package's debug logging (``-vv``) only; its errors always."""
    import logging

    return logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.ERROR


# what one actor may hold, and how many actors
_RESOURCES = {"address": [None, str], "concurrency": [POSITIVE_INT],
              "num_cpus": [None, NON_NEGATIVE_REAL], "num_gpus": [None, NON_NEGATIVE_REAL]}


def _check_reachable(address: str) -> None:
    """Refuse quickly an explicit ``host:port`` where nothing listens (``ray.init`` would wait)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not 'auto', 'local' or HOST:PORT (for "
                         "example 10.0.0.1:6379 or ray://10.0.0.1:10001).")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(
            f"no Ray cluster answers at {address!r} ({exc}); start one there with `ray start "
            "--head`, use 'auto' for the cluster this machine belongs to, or give no address "
            "to start a local cluster for the run.") from None


@validate_params(_RESOURCES)
def connect_ray(address: str | None = None, *, concurrency: int = 1,
                num_cpus: float | None = None, num_gpus: float = 0) -> bool:
    """Connect to a Ray cluster (or start a local one) and check it can hold the actor pool.

    Parameters
    ----------
    address : str or None, default=None
        ``None``: the cluster this process is already connected to, else a new local one;
        ``"local"``: a new local cluster; ``"auto"``: the running cluster this machine belongs
        to; ``"HOST:PORT"`` or ``"ray://HOST:PORT"``: that cluster.
    concurrency, num_cpus, num_gpus
        The actor pool: number of actors and resources per actor.

    Returns
    -------
    True when this call started Ray (the caller shuts it down), False when it was running.

    Raises
    ------
    ImportError
        Ray Data is not installed.
    ConnectionError
        No cluster at ``address``.
    ValueError
        ``num_gpus`` on a cluster without (enough) GPUs, or invalid resources.
    """
    ray = _import_ray()
    started = False
    quiet = {"log_to_driver": False, "logging_level": ray_log_level()}
    if not ray.is_initialized():
        if address in (None, "local"):
            ray.init(include_dashboard=False, **quiet)
        elif address == "auto":
            try:
                ray.init(address="auto", **quiet)
            except ConnectionError:
                raise ConnectionError(
                    "address 'auto': no running Ray cluster was found on this machine; start "
                    "one with `ray start --head`, give its HOST:PORT, or give no address to "
                    "start a local cluster for the run.") from None
        else:
            _check_reachable(str(address))
            ray.init(address=str(address), **quiet)
        started = True
    elif address not in (None, "local", "auto"):
        logger.info("Ray is already initialised in this process; using that cluster, not %s",
                    address)
    total = ray.cluster_resources()
    gpus, cpus = float(total.get("GPU", 0)), float(total.get("CPU", 0))
    if num_gpus and num_gpus > gpus:
        if started:
            ray.shutdown()
        raise ValueError(
            f"num_gpus={num_gpus} per actor, but the Ray cluster has "
            f"{'no GPUs' if not gpus else f'{gpus:g} GPUs in all'} (CPU: {cpus:g}); use "
            "num_gpus=0 (--ray-num-gpus 0) to run on CPUs, or connect to a cluster with GPU "
            "nodes.")
    need = concurrency * (1 if num_cpus is None else num_cpus)
    if need >= cpus:
        logger.warning("the actor pool asks for %g CPUs and the cluster has %g: actors that do "
                       "not fit wait for free CPUs, and Ray Data tasks may find none; give "
                       "actors fewer CPUs (num_cpus=0.5) or fewer actors", need, cpus)
    return started


def _write_block(writer, rows: np.ndarray, acts: np.ndarray) -> None:
    """Write a block's rows (any order, gaps allowed) into the folder, run by run."""
    order = np.argsort(rows, kind="stable")
    rows, acts = rows[order], acts[order]
    for run in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(rows) != 1) + 1):
        lo = int(rows[run[0]])
        writer.write_rows(lo, acts[run], where=f" in rows {lo}..{int(rows[run[-1]])}")


class _EncoderActor:
    """One model per actor: built from the driver's encoder parameters, checked against the plan.

    With ``store`` (the folder and its manifest, on storage this node can write) the actor
    writes and flushes its rows itself and returns only their numbers.
    """

    def __init__(self, cls, params: dict, source: str, layout: dict, store: dict | None = None):
        from .streaming import ShardWriter, source_digest

        self.writer = None if store is None else ShardWriter(store["folder"], store["manifest"])
        self.encoder = cls(**params).fit()
        if source_digest(self.encoder) != source or self.encoder.layout_.to_dict() != layout:
            raise RuntimeError(
                "the model loaded in a Ray actor differs from the driver's (other weights, "
                "tokenizer or settings at the same name or path on this node); the actors' "
                f"layout is {self.encoder.layout_.to_dict()}, the driver's {layout}.")

    def __call__(self, batch: dict) -> dict:
        rows = np.asarray(batch["row"], dtype=np.int64)
        inputs = (_samples_of(batch) if "image_path" in batch
                  else [str(t) for t in batch["text"]])
        acts = np.asarray(self.encoder.transform(inputs), dtype=np.float32)
        if self.writer is None:
            return {"row": rows, "acts": acts}
        _write_block(self.writer, rows, acts)
        self.writer.flush()
        return {"row": rows}


def _check_model_travels(encoder) -> None:
    """Refuse a vision-language model given as an object: transformers' output-capturing hooks
    (installed at its first forward) do not survive the trip to the actors, whose forwards then
    fail; a name or folder loads there as it should."""
    from ..arch.vision import reads_images

    model = encoder.get_params(deep=False)["model"]
    if not isinstance(model, (str, os.PathLike, type(None))) and reads_images(model) == "vlm":
        raise ValueError(
            f"extract_distributed builds each actor's encoder from the driver's parameters, and "
            f"a {type(model).__name__} object does not survive that trip; save it with "
            "model.save_pretrained(folder) and processor.save_pretrained(folder), then give "
            "the folder (on storage every node reads) or a hub name as the model.")


def _actor_params(encoder) -> dict:
    """The encoder's parameters for the actors: no progress bars, and the dtype the driver
    resolved, so that a GPU actor computes what the driver's identity promises."""
    params = encoder.get_params(deep=False)
    params["verbose"] = False
    for key in ("model", "tokenizer", "processor"):  # a local folder: the same from any cwd
        value = params.get(key)
        if isinstance(value, (str, os.PathLike)) and Path(value).exists():
            params[key] = str(Path(value).resolve())
    if params.get("dtype") == "auto":
        params["dtype"] = encoder.layout_.meta["dtype"]
    return params


@validate_params({
    **_RESOURCES, "text_column": [str], "image_column": [str],
    "batch_size": [None, POSITIVE_INT], "shard_size": [None, POSITIVE_INT],
    "store_dtype": [StrOptions(set(STORE_DTYPES))], "overwrite": ["boolean"],
    "shared_storage": ["boolean"], "verbose": ["verbose"],
})
def extract_distributed(encoder, folder: str | os.PathLike, data, *, text_column: str = "text",
                        image_column: str = "image",
                        address: str | None = None, concurrency: int = 1,
                        num_cpus: float | None = None, num_gpus: float = 0,
                        batch_size: int | None = None, shard_size: int | None = None,
                        store_dtype: str = "float32", overwrite: bool = False,
                        shared_storage: bool = False, verbose: bool = False) -> Path:
    """Extract the activations of ``data`` on a Ray cluster into a streamed-extraction folder.

    The same folder, manifest and identity as :meth:`TransformerActivationEncoder.extract_to`:
    :func:`~embetter_plug.load_activations` opens the result as one memory-mapped array in input
    order; a rerun after a failure (of the driver, an actor or a node) computes only the shards
    that are not complete, and either path may resume the other's folder.

    Parameters
    ----------
    encoder : TransformerActivationEncoder
        Fitted. Each actor builds its own from ``encoder.get_params()`` (a name or folder loads
        there; ``dtype="auto"`` becomes the dtype the driver resolved).
    folder : str or path
    data : texts or samples: a list, Series, DataFrame, .csv/.parquet path or ray.data.Dataset
        Texts, or image+text samples as ``extract_to`` takes them (e.g. the samples of
        :func:`~embetter_plug.read_image_folder`); tables use ``text_column`` and, for
        samples, ``image_column`` (image paths or encoded bytes). The driver reads each image
        file's bytes once to key the run (nothing is decoded) and ships paths (made absolute:
        every node must read them at that path) or bytes; the actors read the images. Images
        in memory (PIL, arrays) travel as lossless PNG.
    text_column, image_column : str
        Columns of a table's texts and images.
    address : str or None, default=None
        See :func:`connect_ray`. Ray started here is shut down at the end.
    concurrency : int, default=1
        Actors in the pool, each holding one copy of the model.
    num_cpus, num_gpus : float
        Resources per actor (fractions allowed). ``None`` CPUs is Ray's default of 1.
    batch_size : int or None, default=None
        Texts per actor call; ``None`` is ``4 * encoder.batch_size``. Duplicates within one
        call are computed once.
    shard_size, store_dtype, overwrite
        As in ``extract_to``.
    shared_storage : bool, default=False
        ``folder`` is on storage every node can write at the same path (a local cluster, NFS,
        Lustre): each actor writes and flushes its own rows and only row numbers travel to the
        driver, which then only records complete shards. Otherwise activations travel to the
        driver, which writes them.
    verbose : bool, default=False
        Show a progress bar over texts (samples).

    Returns
    -------
    Path of ``folder``.

    Examples
    --------
    >>> from embetter_plug import TransformerActivationEncoder, load_activations
    >>> from embetter_plug.store.distributed import extract_distributed
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("gpt2")
    >>> enc = TransformerActivationEncoder(model, tok).fit()
    >>> folder = extract_distributed(enc, "acts_ray", ["a text", "another"] * 3,
    ...                              concurrency=1, num_cpus=0.5)  # doctest: +SKIP
    >>> load_activations("acts_ray")[0].shape  # doctest: +SKIP
    (6, 3, 1, 32)
    """
    from sklearn.utils.validation import check_is_fitted

    from ._folder_lock import folder_lock
    from .streaming import ShardWriter, extraction_plan

    check_is_fitted(encoder, "layout_")
    _check_model_travels(encoder)
    batch_size = int(batch_size or 4 * encoder.batch_size)
    if num_gpus and str(encoder.device).startswith("cpu"):
        logger.warning("num_gpus=%s per actor, but the encoder has device=%r: the actors hold "
                       "GPUs and compute on CPUs; use device='auto'", num_gpus, encoder.device)
    started = connect_ray(address, concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus)
    try:
        texts = _read_inputs(data, text_column, image_column)
        with folder_lock(folder):  # one writer at a time (the actors write for this one)
            plan = extraction_plan(encoder, folder, texts, shard_size=shard_size,
                                   store_dtype=store_dtype, overwrite=overwrite)
            writer = ShardWriter.open(folder, plan, overwrite=overwrite)
            _run(encoder, writer, texts, plan, concurrency=concurrency, num_cpus=num_cpus,
                 num_gpus=num_gpus, batch_size=batch_size, shared_storage=shared_storage,
                 verbose=verbose)
    finally:
        if started:
            _import_ray().shutdown()
    return Path(folder)


def _run(encoder, writer, texts, plan, *, concurrency, num_cpus, num_gpus, batch_size,
         shared_storage, verbose) -> None:
    from ray import data as rd

    pending = writer.pending_shards()
    if not pending:
        logger.info("%s is complete: nothing to compute", writer.folder)
        return
    rows = np.concatenate([np.arange(*writer.shard_rows(k)) for k in pending])
    logger.info("%d of %d shards to compute (%d texts) on %d actors", len(pending),
                plan["n_shards"], len(rows), concurrency)
    blocks = _blocks(texts, rows, batch_size)
    store = ({"folder": str(writer.folder.resolve()), "manifest": writer.manifest}
             if shared_storage else None)
    remote = {"num_gpus": num_gpus or None}
    if num_cpus is not None:
        remote["num_cpus"] = num_cpus
    left = {k: writer.shard_rows(k)[1] - writer.shard_rows(k)[0] for k in pending}
    ctx = rd.DataContext.get_current()  # a Dataset keeps the context it was made in
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # ours counts texts
    import logging

    data_log = logging.getLogger("ray.data")  # "progress bars disabled", the plan: at -vv only
    level = data_log.level
    data_log.setLevel(ray_log_level())
    try:
        ds = rd.from_arrow(blocks).map_batches(
            _EncoderActor, batch_size=batch_size, batch_format="numpy",
            compute=rd.ActorPoolStrategy(size=concurrency),
            fn_constructor_kwargs={"cls": type(encoder), "params": _actor_params(encoder),
                                   "source": plan["source"], "layout": plan["layout"],
                                   "store": store},
            **remote)
        _collect(ds, writer, left, len(rows), verbose)
    finally:
        ctx.enable_progress_bars = bars
        data_log.setLevel(level)


def _collect(ds, writer, left: dict, n_rows: int, verbose: bool) -> None:
    """Write each block that comes back; record shards complete as their last rows arrive."""
    from tqdm.auto import tqdm

    size = writer.manifest["shard_size"]
    written = np.zeros(writer.manifest["shape"][0], dtype=bool)  # a retried block may come twice
    with tqdm(total=n_rows, disable=not verbose, desc="extract (ray)", unit="text") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            r = np.asarray(batch["row"], dtype=np.int64)
            if "acts" in batch:
                _write_block(writer, r, batch["acts"])
            new = np.unique(r[~written[r]])
            written[new] = True
            finished = []
            for k, c in zip(*np.unique(new // size, return_counts=True)):
                left[int(k)] -= int(c)
                if left[int(k)] == 0:
                    finished.append(int(k))
            if finished:
                writer.mark_complete(finished)
                logger.info("shards %s complete", finished)
            bar.update(len(new))
