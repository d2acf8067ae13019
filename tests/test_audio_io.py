"""danlu.speech.audio: decoding, resampling, downmix, streaming chunks and one-line errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from danlu.errors import DanluError
from danlu.speech.audio import audio_info, find_audio, iter_audio_chunks, load_audio


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def test_resample_keeps_frequency_and_length(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    sf.write(path, sine(440.0, 2.0, 44100), 44100, subtype="PCM_16")
    x = load_audio(path, 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 32000  # 2 s at the new rate
    assert abs(peak_hz(x, 16000) - 440.0) < 1.0
    assert abs(np.abs(x[2000:-2000]).max() - 0.5) < 0.01  # amplitude survives resampling
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames) == (44100, 1, 88200)
    assert info.duration == pytest.approx(2.0)


def test_stereo_is_averaged(tmp_path: Path) -> None:
    left, right = sine(300.0, 1.0, 16000, 0.6), sine(500.0, 1.0, 16000, 0.2)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    x = load_audio(tmp_path / "s.wav", 16000)
    np.testing.assert_allclose(x, (left + right) / 2, atol=1e-6)
    assert audio_info(tmp_path / "s.wav").channels == 2


@pytest.mark.parametrize(
    "fmt,subtype,tol", [("FLAC", "PCM_16", 1e-4), ("OGG", "VORBIS", None), ("MP3", None, None)]
)
def test_round_trip_formats(tmp_path: Path, fmt: str, subtype: str | None, tol: float | None) -> None:
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    x = sine(440.0, 1.0, 16000)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    y = load_audio(path, 16000)
    if tol is not None:  # lossless
        np.testing.assert_allclose(y, x, atol=tol)
    else:  # lossy codecs shift and smear, but a tone stays a tone
        assert abs(len(y) - len(x)) < 2000
        assert abs(peak_hz(y, 16000) - 440.0) < 2.0
    assert load_audio(path.read_bytes(), 16000).shape == y.shape  # bytes (stdin) decode alike


def test_chunks_tile_the_file_like_the_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, 22050 * 7 + 123).astype(np.float32)
    sf.write(tmp_path / "n.wav", x, 22050, subtype="FLOAT")
    whole = load_audio(tmp_path / "n.wav", 16000)
    chunks = list(iter_audio_chunks(tmp_path / "n.wav", 16000, chunk_seconds=2.0, overlap_seconds=0.5))
    assert [c.start_sample for c in chunks] == list(range(0, 24000 * (len(chunks) - 1) + 1, 24000))
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(len(c.samples) == 32000 for c in chunks[:-1])
    for c in chunks:  # every chunk is exactly the matching slice of the whole (streamed resampling too)
        np.testing.assert_allclose(c.samples, whole[c.start_sample : c.start_sample + 32000], atol=1e-6)
    assert chunks[-1].start_sample + len(chunks[-1].samples) == len(whole)


def _wav(tag: int, bits: int) -> bytes:
    data = np.zeros(800, np.int16).tobytes()
    fmt = struct.pack("<HHIIHH", tag, 1, 16000, 32000, 2, bits) + (b"\0\0" if tag != 1 else b"")
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio at all\n" * 20)
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), 16000)
    (tmp_path / "alaw64.wav").write_bytes(_wav(0x1234, 16))
    sf.write(tmp_path / "ok.flac", sine(200, 1.0, 16000), 16000)
    (tmp_path / "cut.flac").write_bytes((tmp_path / "ok.flac").read_bytes()[:300])
    cases = {
        "empty.wav": "empty",
        "text.wav": "not an audio file",
        "zero.wav": "no audio",
        "alaw64.wav": "unsupported sample format",
        "cut.flac": "corrupt",
        "missing.wav": "does not exist",
    }
    for name, words in cases.items():
        with pytest.raises(DanluError) as e:
            load_audio(tmp_path / name, 16000)
        msg = str(e.value)
        assert name in msg and words in msg and "\n" not in msg, msg


def test_find_audio_recurses_folders(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ("a/1.wav", "a/b/2.flac", "a/b/notes.txt", "3.ogg"):
        (tmp_path / p).write_bytes(b"x")
    found = find_audio([tmp_path / "a", tmp_path / "3.ogg"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.wav", "a/b/2.flac", "3.ogg"]
    with pytest.raises(DanluError, match="does not exist"):
        find_audio([tmp_path / "a" / "b" / "notes.txt", tmp_path / "empty"])
    (tmp_path / "none").mkdir()
    with pytest.raises(DanluError, match="holds no audio files"):
        find_audio([tmp_path / "none"])
