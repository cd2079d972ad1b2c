"""What travels to the actors of :mod:`embetter_plug.store.distributed`: the inputs read in order from
lists, tables, files or a Ray Dataset, and cut into Arrow blocks of row numbers, texts and, for
image+text samples, each image as a path or encoded bytes, read by the actor that encodes it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..inputs.samples import has_images


def _read_inputs(data, text_column: str = "text", image_column: str = "image") -> list:
    """Texts or image+text samples, checked and in order, of a list, pandas Series/DataFrame,
    CSV/Parquet path or ``ray.data`` Dataset (a table with ``image_column`` holds samples: image
    paths or encoded bytes, and texts in ``text_column`` where it exists)."""
    import pandas as pd

    from ..inputs.samples import check_inputs

    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"no file at {str(path)!r}; pass texts, samples, a DataFrame, "
                                    "a ray.data.Dataset or a .csv/.parquet file.")
        if path.suffix == ".csv":
            data = pd.read_csv(path, keep_default_na=False)
        elif path.suffix in (".parquet", ".pq"):
            data = pd.read_parquet(path)
        else:
            raise ValueError(f"{str(path)!r}: only .csv and .parquet files are read; load other "
                             "formats with pandas or ray.data and pass the result.")
    if type(data).__module__.startswith("ray.data"):
        columns = data.columns()
        wanted = [c for c in (text_column, image_column) if c in columns]
        if image_column not in columns:
            wanted = [text_column]
        data = _dataset_columns(data, wanted)
        if image_column not in data:
            data = data[text_column]
    if isinstance(data, pd.DataFrame):
        if image_column in data.columns:
            data = pd.DataFrame({"text": (data[text_column] if text_column in data.columns
                                          else None), "image": data[image_column]})
        elif text_column not in data.columns:
            raise ValueError(f"text_column={text_column!r} is not a column; the columns are "
                             f"{list(data.columns)}.")
        else:
            data = data[text_column]
    if isinstance(data, pd.Series):
        data = data.tolist()
    return check_inputs(data, name="texts")


def _dataset_columns(ds, columns: list[str]):
    """Columns of a Ray Dataset as a DataFrame (a dict for one column), in the dataset's order."""
    import pandas as pd

    have = ds.columns()
    for column in columns:
        if column not in have:
            raise ValueError(f"text_column={column!r} is not a column of the dataset; its "
                             f"columns are {have}.")
    sub = ds.select_columns(columns)
    options = sub.context.execution_options  # the context the dataset was made in
    old, options.preserve_order = options.preserve_order, True
    try:
        out: dict = {c: [] for c in columns}
        for batch in sub.iter_batches(batch_size=None, batch_format="pyarrow"):
            for c in columns:
                out[c].extend(batch.column(c).to_pylist())
        return pd.DataFrame(out)
    finally:
        options.preserve_order = old


def _samples_of(batch: dict) -> list[dict]:
    """The image+text samples of a block: images read here, from a path or encoded bytes."""
    out = []
    for text, path, data in zip(batch["text"], batch["image_path"], batch["image_bytes"]):
        image = path if path is not None else (bytes(data) if data is not None else None)
        out.append({"text": None if text is None else str(text), "image": image})
    return out


def _image_column(samples) -> tuple[list, list]:
    """``(paths, bytes)`` to ship for samples: a path as an absolute path (read by the actor),
    bytes as they are, an image in memory as a lossless PNG of the RGB picture the encoder
    reads; ``None`` where a sample has no image."""
    import io

    from ..inputs.images import load_image

    paths, data = [], []
    for s in samples:
        img = s.image
        if isinstance(img, (str, os.PathLike)):
            paths.append(str(Path(img).resolve()))
            data.append(None)
            continue
        paths.append(None)
        if img is None or isinstance(img, (bytes, bytearray)):
            data.append(None if img is None else bytes(img))
        else:
            buf = io.BytesIO()
            load_image(img).save(buf, format="PNG")
            data.append(buf.getvalue())
    return paths, data


def _blocks(inputs, rows: np.ndarray, batch_size: int) -> list:
    """Arrow blocks of ``batch_size`` rows: row numbers and texts, and for samples the image
    of each row as a path or bytes (never decoded here)."""
    import pyarrow as pa

    samples = has_images(inputs)
    blocks = []
    for i in range(0, len(rows), batch_size):
        chunk = [inputs[j] for j in rows[i:i + batch_size]]
        cols = {"row": rows[i:i + batch_size]}
        if samples:
            paths, data = _image_column(chunk)
            cols["text"] = pa.array([s.text for s in chunk], type=pa.large_string())
            cols["image_path"] = pa.array(paths, type=pa.large_string())
            cols["image_bytes"] = pa.array(data, type=pa.large_binary())
        else:
            cols["text"] = pa.array(chunk, type=pa.large_string())
        blocks.append(pa.table(cols))
    return blocks
