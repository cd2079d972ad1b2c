"""Capture overhead of one checkout of embetter_plug on MiniLM (the bench_encoder row), so two
commits can be compared side by side on one machine:

    python benchmarks/ab_capture_overhead.py /path/to/checkout-A
    python benchmarks/ab_capture_overhead.py /path/to/checkout-B
"""
import os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
root = sys.argv[1]
sys.path.insert(0, root); sys.path.insert(0, os.path.join(root, "benchmarks"))
import embetter_plug
from transformers import AutoModel, AutoTokenizer
from bench_encoder import overhead_rows, load_texts
from embetter_plug.extraction.loading import default_model_path
texts, _ = load_texts(2000)
p = default_model_path()
model = AutoModel.from_pretrained(p).eval(); tok = AutoTokenizer.from_pretrained(p)
row, r = overhead_rows("minilm", model, tok, texts, 5)
print(embetter_plug.__file__, row)
