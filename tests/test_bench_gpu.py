"""The GPU benchmark script runs end to end (tiny models on the CPU); no timing is asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_gpu_benchmark_smoke_run_on_cpu():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--no-write",
                          "--repeats", "1", "--n", "40"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in out.stdout.splitlines() if r.startswith("| ") and "smoke" in r]
    methods = [r.split("|")[2].strip() for r in rows]
    assert methods.count("bare") == 2 and methods.count("SentenceTransformer.encode") == 2
    errors = [float(x) for x in re.findall(r"relative error ([\d.]+)%", out.stdout)]
    # bf16 weights against a float32 copy: close, but not the same run (> 0 proves two runs)
    assert len(errors) == 2 and all(0 < e < 3 for e in errors)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_benchmark_without_cuda_says_so():
    out = subprocess.run([sys.executable, str(SCRIPT), "--no-write"], capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert out.returncode == 1 and "no CUDA device" in out.stderr
