"""Cost of checking image files up front by decoding them in full (a truncated JPEG fails before
the model runs) against reading the header only, and against preparing the same images for the
model (decode to RGB and the image processor's resize and normalise).

    python benchmarks/bench_image_check.py [--n 100] [--repeats 3]

JPEG files of two sizes on disk (random pixels, quality 90); the check is
``embetter_plug.inputs.images.check_image``; the header-only side opens each file and reads its mode,
as the check did before; preparation is ``load_image`` then a ViT image processor (224x224).
Wall-clock seconds over all files, least of ``--repeats``, the three sides interleaved.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _report import write_section  # noqa: E402
from embetter_plug.inputs.images import check_image, load_image  # noqa: E402


def main() -> None:
    from PIL import Image
    from transformers import ViTImageProcessor

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    processor = ViTImageProcessor(size={"height": 224, "width": 224})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((320, 240), (1280, 960)):
            rng = np.random.default_rng(0)
            paths = []
            for i in range(args.n):
                p = Path(tmp) / f"{w}_{i}.jpg"
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
                paths.append(p)

            def header():
                for p in paths:
                    with Image.open(p) as im:
                        im.mode

            def full():
                for i, p in enumerate(paths):
                    check_image(p, f"X[{i}]")

            def prepare():
                for p in paths:
                    processor(images=[load_image(p)], return_tensors="pt")

            best = {"header": np.inf, "full": np.inf, "prepare": np.inf}
            for _ in range(args.repeats):
                for name, fn in (("header", header), ("full", full), ("prepare", prepare)):
                    t = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t)
            rows.append((f"{w}x{h}", args.n, best["header"], best["full"], best["prepare"]))
    lines = ["## Image check up front (`bench_image_check`)", "",
             "Checking image files before the model runs decodes them in full, so a truncated or "
             "corrupt file is named with its row before any work. Wall-clock seconds over all "
             f"files, least of {args.repeats} interleaved repeats (the machine was shared with "
             f"other jobs: load average {os.getloadavg()[0]:.1f} at the start); the ratio is "
             "the full check against preparing the same images for the model.", "",
             "| JPEG size | files | header only s | full decode (check) s | preparation s | "
             "check / preparation |", "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {n} | {a:.3f} | {b:.3f} | {c:.3f} | {b / c:.2f}x |"
              for s, n, a, b, c in rows]
    write_section("bench_image_check", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
