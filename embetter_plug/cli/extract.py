"""`embetter-plug extract`: write the activations of a CSV's texts to disk.

`--out acts.npz` writes one .npz file (array and layout); any other `--out` is a folder filled
shard by shard as texts are encoded, which a rerun of the same command resumes after an
interruption (a .npz output is streamed into `acts.npz.partial` first, so it resumes too). Both are read back with `embetter_plug.load_activations`. An existing .npz file,
or a folder holding a different extraction, is replaced only with `--overwrite`.
`--image-dir DIR` reads a labelled image folder (one sub-folder per class) instead of a CSV and
writes the labels of the rows beside `--out` (`<out>.labels.csv`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._data import (HelpFormatter, add_image_dir_arguments, add_progress_arguments, check_cells,
                    check_columns, positive_int, read_csv, read_image_dir, read_samples,
                    select_split)
from ._runs import InterruptNote


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """The `TransformerActivationEncoder` options, shared by commands that extract."""
    g = parser.add_argument_group("encoder")
    g.add_argument("--model", default=None,
                   help="hub name or local folder (default: the built-in all-MiniLM-L6-v2)")
    g.add_argument("--tokenizer", default=None, help="tokenizer name or folder (default: the model's own)")
    g.add_argument("--processor", default=None,
                   help="processor name or folder for a model that reads images (default: the "
                        "model's own)")
    g.add_argument("--layers", default="all", help="'all' or comma-separated ints, e.g. 0,3,-1")
    g.add_argument("--parts", default="resid_post",
                   help="comma-separated: resid_post (alias rs, resid), attn_out (attn), "
                        "mlp_out (mlp), resid_pre, or module paths such as 'h.{layer}.mlp'")
    g.add_argument("--heads", default="all",
                   help="attention heads read by per-head parts (attn_z, attn_result, attn_q, "
                        "attn_k, attn_v, attn_entropy, ...): 'all' or comma-separated ints")
    g.add_argument("--token-pooling", default="auto",
                   help="comma-separated: auto, lasttoken, mean, max, min, cls, a float in [0, "
                        "1], or one modality's tokens such as image:mean, text:lasttoken")
    g.add_argument("--prompt-template", default=None, help="e.g. '{text}<end_of_turn>'")
    g.add_argument("--max-length", type=positive_int, default=None,
                   help="truncate texts to this many tokens (default: the model's limit)")
    g.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model weights' dtype")
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code")
    g.add_argument("--cache", default=None, metavar="DIR",
                   help="read through an activation cache in DIR (see `embetter-plug cache`): a "
                        "rerun, after an interruption too, computes only what is missing")


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _all_or_ints(value: str, option: str, example: str):
    """``"all"`` or the comma-separated ints of ``option`` (``--layers``, ``--heads``)."""
    if value == "all":
        return "all"
    try:
        return [int(v) for v in _list(value)]
    except ValueError:
        raise ValueError(f"{option} {value!r}: use 'all' or comma-separated ints such as "
                         f"{example}.") from None


def _pooling(value: str):
    out = []
    for v in _list(value):
        try:
            out.append(float(v))
        except ValueError:
            out.append(v)
    return out[0] if len(out) == 1 else out


def encoder_from_args(args):
    """A `TransformerActivationEncoder` (unfitted) from :func:`add_encoder_arguments` options."""
    from embetter_plug import TransformerActivationEncoder

    return TransformerActivationEncoder(
        args.model, args.tokenizer, processor=getattr(args, "processor", None),
        layers=_all_or_ints(args.layers, "--layers", "0,3,-1"), parts=_list(args.parts),
        heads=_all_or_ints(getattr(args, "heads", "all"), "--heads", "0,3"),
        token_pooling=_pooling(args.token_pooling), prompt_template=args.prompt_template,
        max_length=args.max_length, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, revision=args.revision, trust_remote_code=args.trust_remote_code,
        verbose=getattr(args, "progress", False), cache=args.cache,
    )


def read_texts(path: str | None, text_col: str, split: str | None = None,
               limit: int | None = None, image_col: str | None = None) -> list:
    """Texts of a CSV column (the built-in data set when `path` is None), or image+text samples
    with `image_col` (see :func:`read_samples`).

    Rows of `split` only, then the first `limit`; an empty text is an error naming its CSV line.
    """
    df, _ = read_csv(path)
    if image_col is None:
        check_columns(df, path, text_col=text_col)
    df = select_split(df, split, path)
    if limit is not None:
        df = df.iloc[:limit]
    if image_col is not None:
        return read_samples(df, path, text_col, image_col)
    check_cells(df, path, "--text-col", text_col, "text(s)")
    return df[text_col].astype(str).tolist()


def read_inputs(args) -> list:
    """The samples of ``--image-dir`` (their labels kept for :func:`write_labels`), else
    :func:`read_texts` of ``--data``."""
    folder = read_image_dir(args)
    if folder is None:
        return read_texts(args.data, args.text_col, args.split, args.limit, args.image_col)
    samples, args.image_labels = folder
    return samples


def write_labels(args) -> None:
    """With ``--image-dir``: the labels of ``--out``'s rows, next to it (once ``--out`` is
    accepted)."""
    labels = getattr(args, "image_labels", None)
    if labels is not None:
        labels.to_csv(labels_path(args.out), index=False)
        print(f"labels of the {len(labels)} rows ({', '.join(labels.columns[1:])}) in "
              f"{labels_path(args.out)}", flush=True)


def labels_path(out: str) -> Path:
    """Where ``extract --image-dir`` writes the labels of ``--out``'s rows."""
    return Path(out.rstrip("/\\") + ".labels.csv")


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the texts come from: ``--data``, ``--text-col``, ``--split``, ``--limit`` (read
    with :func:`read_texts`)."""
    parser.add_argument("--data", default=None, help="CSV file (default: the built-in data set)")
    parser.add_argument("--text-col", default="text", help="column of texts")
    add_image_argument(parser)
    parser.add_argument("--split", default=None, help="keep rows whose 'split' column equals this")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N texts")


def add_image_argument(parser: argparse.ArgumentParser) -> None:
    """``--image-col``: a column of image paths, for models that read images."""
    parser.add_argument("--image-col", "--image-column", dest="image_col", default=None,
                        help="column of image paths (relative to the CSV's folder; an empty cell "
                             "is a row without an image), for models that read images")


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                   formatter_class=HelpFormatter)
    add_text_arguments(parser)
    add_image_dir_arguments(parser)
    parser.add_argument("--out", required=True,
                        help="a .npz file, or a folder to stream shards into (resumable)")
    parser.add_argument("--shard-size", type=positive_int, default=None,
                        help="rows per shard when streaming (default: at most about 64 MiB, 256 "
                             "rows or a minute of work per shard)")
    parser.add_argument("--store-dtype", default="float32", choices=["float32", "float16"],
                        help="dtype of the stored activations (float16 refuses values beyond "
                             "its maximum, 65504)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing .npz file, or a folder that holds a different "
                             "extraction")
    add_progress_arguments(parser)
    add_encoder_arguments(parser)
    from . import _ray

    _ray.add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def check_out(args, texts: list[str]) -> dict | None:
    """Refuse an unusable `--out` before the model loads; return a resumable folder's manifest.

    What needs the fitted layout (layers, parts, model) is checked again when writing.
    """
    from embetter_plug.store.streaming import check_extraction_folder

    out = Path(args.out)
    if args.out.endswith(".npz"):
        if out.is_dir():
            raise ValueError(f"--out {args.out!r} is a folder; a .npz output is one file.")
        if out.exists() and not args.overwrite:
            raise ValueError(f"--out {args.out!r} already exists; pass --overwrite to replace it, "
                             "or choose another name.")
        out = staging_folder(args.out)  # shards go there first, so a rerun resumes
    elif out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} is a file; without the .npz suffix --out is a folder "
                         "to stream shards into. Give a new folder, or a name ending in .npz.")
    return check_extraction_folder(out, texts, store_dtype=args.store_dtype,
                                   shard_size=args.shard_size, overwrite=args.overwrite)


RESUME = "run the same command again to resume (it skips the complete shards)"


def staging_folder(npz: str) -> Path:
    """Where a ``.npz`` output's shards are streamed (and kept on interruption) until it is done."""
    return Path(npz + ".partial")


def kept(folder: Path, n_texts: int) -> str:
    """What an interrupted extraction left in ``folder``, from its manifest."""
    from embetter_plug.store.io import read_manifest

    man = read_manifest(folder) if folder.is_dir() else None
    done = sorted(set(range(man.get("n_done", 0))) | set(man.get("done_after", []))) if man else []
    if not done:
        return "nothing was kept (no shard was complete yet)"
    size = man["shard_size"]  # shards complete out of order (a Ray run) count too
    rows = sum(min(n_texts, (k + 1) * size) - k * size for k in done)
    return (f"{len(done)} of {man['n_shards']} shards ({rows} of {n_texts} texts) in "
            f"{str(folder)!r}")


def run(args) -> int:
    import shutil

    import numpy as np

    from embetter_plug import load_activations, save_activations

    on_ray = getattr(args, "ray", None) is not None
    if on_ray:
        from . import _ray

        _ray.check_out_is_folder(args)
    texts = read_inputs(args)
    old = check_out(args, texts)
    write_labels(args)
    npz = args.out.endswith(".npz")
    folder = staging_folder(args.out) if npz else Path(args.out)
    args.on_interrupt = InterruptNote(
        lambda: kept(folder, len(texts)),
        RESUME + (" (the .npz file is written when all are done)" if npz else ""))
    if on_ray:
        return _ray.run(args, texts, old, lambda: encoder_from_args(args))
    enc = encoder_from_args(args).fit(texts)
    out = enc.extract_to(folder, texts, shard_size=args.shard_size,
                         store_dtype=args.store_dtype, overwrite=args.overwrite)
    shape, dtype = (len(texts), *enc.layout_.shape), np.dtype(args.store_dtype)
    if npz:
        X, layout = load_activations(folder)  # memory-mapped
        out = save_activations(args.out, X, layout)
        del X
        shutil.rmtree(folder)
    what = (f"activations {shape} {dtype} (sample, layer, part, hidden) in {out}; "
            f"layers {list(enc.layout_.layers)}, parts {list(enc.layout_.parts)}")
    done, total = (old or {}).get("n_done", 0), (old or {}).get("n_shards", 0)
    if old is not None and done >= total and not npz:
        print(f"already complete, nothing to do: {what}")
    elif old is not None and done:
        print(f"resumed after shard {done} of {total}, wrote the rest: {what}")
    else:
        print(f"wrote {what}")
    return 0
