"""What the check at fit adds to the any-architecture test, side by side in one run.

    python benchmarks/bench_check_cost.py

``check_architecture`` of ``tests/test_any_architecture.py`` over 12 families, the models built
once, run twice with the encoder's ``verify`` defaulting to False and to True in turns; prints
the CPU seconds of each and their ratio (recorded by hand in RESULTS.md, section "The
any-architecture test with the check").
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_any_architecture as T  # noqa: E402

import embetter_plug.encoder as E  # noqa: E402

TYPES = ["gpt2", "llama", "bert", "gemma2", "qwen2", "opt", "t5", "mistral", "phi", "roberta",
         "falcon", "bloom"]


def main() -> None:
    original = E.TransformerActivationEncoder.__init__
    models = {t: T.build(t)[0] for t in TYPES}
    total = {True: 0.0, False: 0.0}
    for _ in range(2):
        for verify in (False, True):
            @functools.wraps(original)
            def init(self, *args, _verify=verify, **kwargs):
                kwargs.setdefault("verify", _verify)
                original(self, *args, **kwargs)

            E.TransformerActivationEncoder.__init__ = init
            start = time.process_time()
            try:
                for t in TYPES:
                    T.check_architecture(t, models[t])
            finally:
                E.TransformerActivationEncoder.__init__ = original
            total[verify] += time.process_time() - start
    print(f"without the check {total[False]:.1f} CPU s, with it {total[True]:.1f} CPU s, "
          f"ratio {total[True] / total[False]:.2f}")


if __name__ == "__main__":
    main()
