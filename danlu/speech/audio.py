"""Audio files in, float32 mono samples out.

Everything that reads audio goes through here: `load_audio` for a whole file,
`iter_audio_chunks` for files too long to hold (an hour at 16 kHz is 230 MB of float32,
and the model's features are larger still), `audio_info` to size a file without decoding
it, and `find_audio` to expand the files and folders a user names.

Decoding is libsndfile's (through soundfile): WAV, FLAC, OGG/Vorbis/Opus and MP3 where the
installed libsndfile has it. Resampling is soxr's. Samples come back in [-1, 1], mono
(channels averaged), at the sample rate asked for.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import DanluError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")
STDIN = "-"
_BLOCK_FRAMES = 1 << 16  # frames decoded per read when streaming


@dataclass(frozen=True)
class AudioInfo:
    path: str
    duration: float  # seconds
    sample_rate: int
    channels: int
    frames: int
    format: str  # e.g. "WAV", "FLAC"
    subtype: str  # e.g. "PCM_16"


@dataclass
class AudioChunk:
    """One block of a streamed file: samples[0] is at `start` seconds (at the target rate)."""

    samples: np.ndarray  # float32 mono
    start_sample: int
    sample_rate: int
    is_last: bool

    @property
    def start(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


Source = str | Path | bytes


def _name(source: Source) -> str:
    return "<stdin>" if isinstance(source, bytes) else str(source)


def _open(source: Source) -> Any:
    """An open soundfile.SoundFile, or a DanluError that names the file and the problem."""
    import soundfile as sf

    name = _name(source)
    if isinstance(source, bytes):
        if not source:
            raise DanluError(f"'{name}' is empty (0 bytes); give an audio file")
        target: Any = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise DanluError(f"audio file '{name}' does not exist")
        if path.is_dir():
            raise DanluError(f"'{name}' is a folder; give an audio file")
        if path.stat().st_size == 0:
            raise DanluError(f"'{name}' is empty (0 bytes); give an audio file")
        target = str(path)
    try:
        f = sf.SoundFile(target)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DanluError(_decode_message(name, str(e), _wav_format(source))) from None
    if f.frames == 0 or f.samplerate <= 0 or f.channels <= 0:
        f.close()
        raise DanluError(f"'{name}' holds no audio (zero-length {f.format} file); give a non-empty recording")
    return f


# WAV format tags libsndfile decodes: PCM, ADPCM, float, A-law, mu-law, IMA ADPCM, GSM, MPEG L3,
# extensible
_WAV_TAGS = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0x0055, 0xFFFE}


def _wav_format(source: Source) -> str | None:
    """'format tag 0x1234, 16-bit' for a RIFF/WAVE header libsndfile cannot decode, else None."""
    if isinstance(source, bytes):
        head = source[:4096]
    else:
        try:
            with Path(source).open("rb") as f:
                head = f.read(4096)
        except OSError:
            return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at = head.find(b"fmt ")
    if at < 0 or len(head) < at + 24:
        return None
    tag = int.from_bytes(head[at + 8 : at + 10], "little")
    bits = int.from_bytes(head[at + 22 : at + 24], "little")
    float_ok = tag == 0x0003 and bits in (32, 64)
    if float_ok or (tag != 0x0003 and tag in _WAV_TAGS and bits in (0, 4, 8, 16, 24, 32)):
        return None
    return f"WAV format tag 0x{tag:04x}, {bits}-bit samples"


def _decode_message(name: str, err: str, wav_format: str | None = None) -> str:
    err = " ".join(err.split())
    low = err.lower()
    if wav_format or "unsupported" in low or "unimplemented" in low or "not supported" in low:
        return (
            f"'{name}' uses an unsupported sample format ({wav_format or err}); convert it to 16-bit PCM "
            f"WAV or FLAC, e.g. ffmpeg -i in -ar 16000 -ac 1 out.wav"
        )
    if "format not recognised" in low or "unknown format" in low or "not recognised" in low:
        return f"'{name}' is not an audio file libsndfile can read (WAV, FLAC, OGG, MP3); {err}"
    return f"cannot decode '{name}': {err}; the file may be corrupt or not audio"


def audio_info(path: Source) -> AudioInfo:
    """Duration, sample rate and channels from the header, without decoding the samples."""
    with _open(path) as f:
        return AudioInfo(
            path=_name(path),
            duration=f.frames / f.samplerate,
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            frames=int(f.frames),
            format=str(f.format),
            subtype=str(f.subtype),
        )


def _mono(block: np.ndarray) -> np.ndarray:
    # block is (frames, channels); average channels rather than take the first one so a
    # recording with one silent channel still works
    if block.shape[1] == 1:
        return block[:, 0]
    return block.mean(axis=1, dtype=np.float32)


def _read_block(f: Any, name: str, frames: int) -> np.ndarray:
    import soundfile as sf

    try:
        block = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise DanluError(_decode_message(name, str(e))) from None
    return block


def load_audio(path: Source, sample_rate: int) -> np.ndarray:
    """The whole file as float32 mono samples in [-1, 1] at `sample_rate`.

    `path` may also be the raw bytes of an audio file (what `-` reads from stdin)."""
    name = _name(path)
    with _open(path) as f:
        native = int(f.samplerate)
        data = _read_block(f, name, -1)
    if data.size == 0:
        raise DanluError(
            f"'{name}' holds no audio (zero-length or truncated file); give a non-empty recording"
        )
    samples = _mono(data)
    if not np.all(np.isfinite(samples)):
        raise DanluError(f"'{name}' holds NaN or infinite samples; the file is corrupt")
    if native != sample_rate:
        samples = resample(samples, native, sample_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a whole mono signal (soxr, high quality)."""
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples.astype(np.float32, copy=False), from_rate, to_rate, quality="HQ")


def _stream_samples(path: Source, sample_rate: int) -> Iterator[np.ndarray]:
    """Decoded, downmixed, resampled blocks of a file, one libsndfile read at a time."""
    name = _name(path)
    with _open(path) as f:
        native = int(f.samplerate)
        stream = None
        if native != sample_rate:
            import soxr

            stream = soxr.ResampleStream(native, sample_rate, 1, dtype="float32", quality="HQ")
        got_any = False
        while True:
            block = _read_block(f, name, _BLOCK_FRAMES)
            last = block.shape[0] < _BLOCK_FRAMES
            if block.shape[0]:
                got_any = True
            mono = _mono(block) if block.shape[0] else np.zeros(0, np.float32)
            if stream is not None:
                mono = stream.resample_chunk(mono, last=last)
            if mono.size:
                yield np.ascontiguousarray(mono, dtype=np.float32)
            if last:
                break
        if not got_any:
            raise DanluError(
                f"'{name}' holds no audio (zero-length or truncated file); give a non-empty recording"
            )


def iter_audio_chunks(
    path: Source, sample_rate: int, chunk_seconds: float, overlap_seconds: float = 0.0
) -> Iterator[AudioChunk]:
    """Stream a file as overlapping chunks of `chunk_seconds`, memory flat in the file's length.

    Consecutive chunks start (chunk_seconds - overlap_seconds) apart and share
    `overlap_seconds` of audio. The final chunk (`is_last`) may be shorter; a chunk is last
    exactly when it reaches the end of the file. This is the same tiling as transformers'
    ASR pipeline with chunk_length = chunk and stride_left + stride_right = overlap.
    """
    chunk = int(round(chunk_seconds * sample_rate))
    overlap = int(round(overlap_seconds * sample_rate))
    if chunk <= 0:
        raise DanluError(f"chunk length must be positive, got {chunk_seconds} s")
    if overlap < 0 or overlap >= chunk:
        raise DanluError(
            f"chunk overlap must be at least 0 and shorter than the chunk ({chunk_seconds} s), "
            f"got {overlap_seconds} s"
        )
    step = chunk - overlap
    buffer = np.zeros(0, np.float32)
    start = 0
    eof = False
    blocks = _stream_samples(path, sample_rate)
    while True:
        # one sample beyond the chunk tells whether this chunk is the last
        while not eof and len(buffer) <= chunk:
            try:
                buffer = np.concatenate([buffer, next(blocks)])
            except StopIteration:
                eof = True
        is_last = eof and len(buffer) <= chunk
        if len(buffer) == 0:
            return
        yield AudioChunk(
            samples=buffer[:chunk].copy(), start_sample=start, sample_rate=sample_rate, is_last=is_last
        )
        if is_last:
            return
        buffer = buffer[step:]
        start += step


def find_audio(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for known audio extensions (sorted).

    A named file is kept whatever its extension (the decoder judges it); a missing path or a
    folder without audio is an error naming it."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(q for q in path.rglob("*") if q.is_file() and q.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                raise DanluError(
                    f"folder '{path}' holds no audio files (looked for {', '.join(AUDIO_EXTENSIONS)})"
                )
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise DanluError(f"audio file '{path}' does not exist")
    return out


def array_chunks(samples: np.ndarray, sample_rate: int) -> Callable[[float, float], Iterator[AudioChunk]]:
    """The same tiling as iter_audio_chunks, over samples already in memory."""

    def chunks(chunk_seconds: float, overlap_seconds: float) -> Iterator[AudioChunk]:
        chunk = int(round(chunk_seconds * sample_rate))
        step = chunk - int(round(overlap_seconds * sample_rate))
        n = len(samples)
        for start in range(0, max(n, 1), step):
            is_last = start + chunk >= n
            yield AudioChunk(samples[start : start + chunk], start, sample_rate, is_last)
            if is_last:
                return

    return chunks
