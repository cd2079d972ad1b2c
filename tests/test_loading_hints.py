"""A failed model load says what to check, and never suggests a setting that is already on."""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from embetter_plug.extraction.loading import _explained


@pytest.mark.parametrize("offline", [True, False])
def test_hub_error_hint_follows_the_offline_setting(monkeypatch, offline):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(OSError) as exc, _explained("model", "no-such/model"):
        raise OSError("not found in the cached files.")
    text = str(exc.value)
    assert text.startswith("could not load model 'no-such/model': not found in the cached files. ")
    assert ("set HF_HUB_OFFLINE=1" in text) is not offline
    assert ("HF_HUB_OFFLINE is set, so a hub name loads only from the local hub cache" in text) \
        is offline


def test_the_command_line_gives_the_offline_hint(tmp_path):
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "embetter_plug.cli", "extract", "--model",
                          "no-such-org/no-such-model", "--limit", "2", "--out",
                          str(tmp_path / "a.npz")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 2
    assert "HF_HUB_OFFLINE is set" in run.stderr and "set HF_HUB_OFFLINE=1" not in run.stderr


def test_an_expected_load_report_goes_to_debug(tmp_path, capfd, caplog):
    """The bare model from a *ForConditionalGeneration folder leaves its LM head unused: expected,
    so transformers' LOAD REPORT goes to the debug log; weights left MISSING still show."""
    import logging

    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.extraction.loading import _ExpectedLoadReport
    from embetter_plug.testing import save_tiny_vlm

    folder = save_tiny_vlm("llava", tmp_path / "llava")
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="embetter_plug"):
        TransformerActivationEncoder(str(folder), layers=[0]).fit()
    assert "LOAD REPORT" not in capfd.readouterr().err
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("LOAD REPORT" in m and "lm_head.weight" in m and "UNEXPECTED" in m for m in debug)

    def record(text):
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, text,
                                 None, None)

    keep = _ExpectedLoadReport()
    assert keep.filter(record("LlamaModel LOAD REPORT\nnorm.weight | MISSING")) is True
    assert keep.filter(record("something else")) is True
    assert keep.filter(record("LlavaModel LOAD REPORT\nlm_head.weight | UNEXPECTED")) is False
