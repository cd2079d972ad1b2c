"""`embetter-plug extract --ray [ADDRESS]`: the extraction on a Ray cluster.

The options are added to `extract` by :func:`add_arguments`; :func:`run` does the work when
`--ray` is given, after `extract` has read and checked the inputs, `--out` and the labels.
Everything that can be refused (the data, `--out`, the cluster and its resources) is checked
before the model loads in the driver.
"""

from __future__ import annotations

import argparse
import sys

from ._data import positive_int


def _resource(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number; use a number >= 0, "
                                         "fractions allowed (0.5).") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}.")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Ray cluster (pip install "embetter_plug[ray]")')
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="extract on a Ray cluster into the --out folder: 'auto' (the running "
                        "cluster of this machine), HOST:PORT or ray://HOST:PORT, or no value "
                        "for a local cluster started for the run")
    g.add_argument("--ray-actors", type=positive_int, default=1, metavar="N",
                   help="actors in the pool, each holding one copy of the model")
    g.add_argument("--ray-num-gpus", type=_resource, default=0, metavar="GPUS",
                   help="GPUs per actor (fractions share a GPU)")
    g.add_argument("--ray-num-cpus", type=_resource, default=None, metavar="CPUS",
                   help="CPUs per actor (default: Ray's 1); keep actors x CPUs below the "
                        "cluster's CPUs so Ray Data's own tasks get one")
    g.add_argument("--ray-batch-size", type=positive_int, default=None, metavar="N",
                   help="texts per actor call (default: 4 x --batch-size)")
    g.add_argument("--ray-shared-storage", action="store_true",
                   help="--out is on storage every node can write at the same path (a local "
                        "cluster, NFS): actors write their rows themselves instead of sending "
                        "them to this process")


def check_out_is_folder(args) -> None:
    """Refuse a ``.npz`` ``--out``: a Ray run writes a folder."""
    if args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out!r}: --ray writes a folder (shards and a manifest, "
                         "resumable); give a folder name without .npz.")


def run(args, texts: list, old: dict | None, make_encoder) -> int:
    """Extract ``texts`` on the cluster into ``--out``; ``old`` is the folder's manifest, if any.

    ``make_encoder()`` returns the unfitted encoder of the command's options. The inputs, `--out`
    and the labels were read and checked by `extract` before this is called.
    """
    from embetter_plug.store.distributed import connect_ray, extract_distributed

    try:
        started = connect_ray(args.ray, concurrency=args.ray_actors,
                              num_cpus=args.ray_num_cpus, num_gpus=args.ray_num_gpus)
    except ImportError as exc:  # the message gives the install line
        print(f"embetter-plug extract: error: {exc}", file=sys.stderr)
        return 2
    import ray

    try:
        enc = make_encoder().fit(texts)
        out = extract_distributed(
            enc, args.out, texts, concurrency=args.ray_actors, num_cpus=args.ray_num_cpus,
            num_gpus=args.ray_num_gpus, batch_size=args.ray_batch_size,
            shard_size=args.shard_size, store_dtype=args.store_dtype, overwrite=args.overwrite,
            shared_storage=args.ray_shared_storage, verbose=args.progress)
    finally:
        if started:
            ray.shutdown()
    old = old or {}
    done = old.get("n_done", 0) + len(old.get("done_after", []))
    total = old.get("n_shards", 0)
    state = ("already complete, nothing to do" if old and done >= total else
             f"resumed ({done} of {total} shards were complete)" if done else "wrote")
    print(f"{state}: activations ({len(texts)}, {', '.join(map(str, enc.layout_.shape))}) "
          f"{args.store_dtype} (sample, layer, part, hidden) in {out}, on "
          f"{args.ray_actors} Ray actor(s); layers {list(enc.layout_.layers)}, parts "
          f"{list(enc.layout_.parts)}")
    return 0
