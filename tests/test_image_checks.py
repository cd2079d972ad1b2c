"""Images are checked in full before any model work: a truncated file (path, bytes or a lazily
opened PIL image) and NaN or infinite pixels are errors that name the row (and the file)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from embetter_plug import TransformerActivationEncoder
from embetter_plug.testing import make_tiny_vision

Image = pytest.importorskip("PIL.Image")


def _jpeg(seed, size=(40, 32)) -> bytes:
    rng = np.random.RandomState(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3)).astype("uint8")).save(
        buf, format="JPEG", quality=90)
    return buf.getvalue()


def _truncated() -> bytes:
    data = _jpeg(9)
    cut = data[: len(data) // 2]
    with Image.open(io.BytesIO(cut)) as im:  # the header alone reads fine: the old check passed
        assert im.size == (40, 32)
        with pytest.raises(OSError, match="truncated"):
            im.load()
    return cut


@pytest.fixture
def counted():
    model, processor = make_tiny_vision("vit")
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                       token_pooling="cls").fit()
    calls.clear()
    yield enc, calls
    handle.remove()


def test_truncated_jpeg_file_stops_extract_to_before_the_model_runs(counted, tmp_path):
    enc, calls = counted
    paths = []
    for i in range(5):
        p = tmp_path / f"im{i}.jpg"
        p.write_bytes(_truncated() if i == 3 else _jpeg(i))
        paths.append(p)
    with pytest.raises(ValueError, match=r"texts\[3\]: image file '.*im3\.jpg' cannot be decoded "
                                         r"\(image file is truncated"):
        enc.extract_to(tmp_path / "out", paths, shard_size=1)
    assert calls == []
    assert not (tmp_path / "out").exists()
    # the same rows without the broken file extract fine
    out = enc.extract_to(tmp_path / "ok", [p for i, p in enumerate(paths) if i != 3],
                         shard_size=1)
    assert (out / "manifest.json").exists()


@pytest.mark.parametrize("as_", ["bytes", "pil"])
def test_truncated_bytes_or_lazy_pil_image_is_named_before_the_forward(counted, as_, tmp_path):
    enc, calls = counted
    cut = _truncated()
    if as_ == "bytes":
        bad, match = cut, r"X\[1\]: \d+ bytes cannot be decoded \(image file is truncated"
    else:
        p = tmp_path / "cut.jpg"
        p.write_bytes(cut)
        bad = Image.open(p)  # lazy: only the header is read
        match = r"X\[1\]: the image read from '.*cut\.jpg' cannot be decoded"
    with pytest.raises(ValueError, match=match):
        enc.transform([Image.open(io.BytesIO(_jpeg(0))), bad])
    assert calls == []


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_float_image_with_nan_or_inf_is_refused_naming_the_row(counted, value):
    enc, calls = counted
    good = np.random.RandomState(0).rand(16, 16, 3)
    bad = good.copy()
    bad[2, 5, 1] = value
    with pytest.raises(ValueError, match=r"X\[2\]: the image is a float64 array with 1 NaN or "
                                         r"infinite value\(s\) \(first at index \(2, 5, 1\)\)"):
        enc.transform([good, good, bad])
    assert calls == []
