"""The quantized speech tier: `danlu transcribe --dtype int8` (and danlu.transcribe(dtype="int8")),
dynamic int8 quantization of a CTC model's Linear layers (danlu/speech/quantize.py).

Against float32 on the same model and audio: the frame log-probabilities stay close and the
transcripts nearly agree. The random Wav2Vec2 of the transcribe tests is a harsh case (its
head is scaled up so frames disagree, so near-ties between characters are common); the real
figures (FSDD test WER, espeak-ng speech) are benchmarks/transcribe.py's."""

from __future__ import annotations

from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
from asr_models import make_wav2vec2, make_whisper, noise_speech

import danlu
from danlu.speech.recognizer import resolve_speech


@pytest.fixture(scope="module")
def w2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_wav2vec2(tmp_path_factory.mktemp("w2v") / "model", hidden=64)


def test_int8_ctc_close_to_float32(w2v: Path, tmp_path: Path, invoke_cli) -> None:  # type: ignore[no-untyped-def]
    audio = noise_speech(6.0, seed=3)
    wav = tmp_path / "a.wav"
    sf.write(wav, audio, 16000, subtype="FLOAT")
    fp32 = resolve_speech(w2v, device="cpu")
    int8 = resolve_speech(w2v, dtype="int8")
    assert "DynamicQuantizedLinear" in str(int8.model) and "DynamicQuantizedLinear" not in str(fp32.model)
    with torch.no_grad():
        lp32, lp8 = (m.forward([audio])[0] for m in (fp32, int8))
    # int8 weights (per channel) and activations (per call) move the logits by ~2% of their
    # spread here (measured 1.8%); the best frame label agrees on ~99% of frames (measured 98.7%)
    spread = float(lp32.std())
    assert float((lp32 - lp8).abs().mean()) < 0.04 * spread
    assert float((lp32.argmax(-1) == lp8.argmax(-1)).float().mean()) >= 0.95
    ref = danlu.transcribe(w2v, wav).text
    got = danlu.transcribe(w2v, wav, dtype="int8").text
    assert len(ref) > 20 and jiwer.cer(ref, got) <= 0.05  # measured 0.022 on 182 characters
    # the command: the same text, and the model folder untouched
    before = {p.name: p.read_bytes() for p in w2v.iterdir() if p.is_file()}
    r = invoke_cli("transcribe", w2v, wav, "--dtype", "int8", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == got
    assert {p.name: p.read_bytes() for p in w2v.iterdir() if p.is_file()} == before


def test_int8_refused_where_not_covered(w2v: Path, tmp_path: Path, invoke_cli) -> None:  # type: ignore[no-untyped-def]
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(8000, np.float32), 16000)
    whisper = make_whisper(tmp_path / "whisper")
    r = invoke_cli("transcribe", whisper, wav, "--dtype", "int8")
    assert r.exit_code == 2
    assert "--dtype int8 covers CTC models" in r.stderr and "hf-whisper" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = invoke_cli("transcribe", w2v, wav, "--dtype", "int4")
    assert r.exit_code == 2 and "valid: float32, int8" in r.stderr
    if torch.cuda.is_available():  # pragma: no cover - CPU machines
        return
    r = invoke_cli("transcribe", w2v, wav, "--dtype", "int8", "--device", "cuda")
    assert r.exit_code == 2 and "CPU only" in r.stderr
