"""`danlu transcribe` and `danlu.transcribe`: audio files, bytes or samples in, a `Transcript`
(text, timed segments and words) out, through the recognizer of danlu/speech/recognizer.py
(which kinds of model there are, how long audio is chunked and decoded)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import DanluError, choose_from
from danlu.speech.audio import AudioChunk, array_chunks, iter_audio_chunks, load_audio
from danlu.speech.recognizer import (
    CTCRecognizer,
    Options,
    Progress,
    Segment,
    SpeechModel,
    load_speech,
    speech_options,
)

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt")


# ---------------------------------------------------------------------------- results


@dataclass
class Transcript:
    """What `danlu.transcribe` returns for one input: the text and its timed segments."""

    text: str
    segments: list[Segment]
    duration: float  # seconds of audio
    source: str = ""
    language: str | None = None
    elapsed: float = 0.0  # seconds spent transcribing

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time / audio duration (lower is faster)."""
        return self.elapsed / self.duration if self.duration else 0.0

    def to_dict(self, words: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not words:
            for s in d["segments"]:
                s.pop("words", None)
        return d

    def to_json(self, words: bool = True) -> str:
        return json.dumps(self.to_dict(words), ensure_ascii=False, indent=2)

    def to_srt(self) -> str:
        blocks = [
            f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
            for i, s in enumerate(self.segments, 1)
        ]
        return "\n".join(blocks)

    def to_vtt(self) -> str:
        blocks = [
            f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in self.segments
        ]
        return "WEBVTT\n\n" + "\n".join(blocks)

    def render(self, fmt: str, words: bool = True) -> str:
        if fmt == "txt":
            return self.text.strip() + "\n"
        if fmt == "json":
            return self.to_json(words) + "\n"
        if fmt == "srt":
            return self.to_srt()
        if fmt == "vtt":
            return self.to_vtt()
        raise choose_from(fmt, OUTPUT_FORMATS, "output format")


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


# ---------------------------------------------------------------------------- transcribe


def transcribe_one(
    model: SpeechModel,
    source: str | Path | bytes | np.ndarray,
    opts: Options,
    *,
    sample_rate: int | None = None,
    progress: Progress | None = None,
    name: str | None = None,
) -> Transcript:
    """Transcribe one input: a file path (streamed), the bytes of a file, or samples + sample_rate."""
    from danlu.speech.audio import audio_info, resample

    progress = progress or (lambda _s: None)
    t0 = time.perf_counter()
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise DanluError("a numpy array of samples needs sample_rate=...")
        samples = np.asarray(source, dtype=np.float32)
        if samples.ndim == 2:  # (samples, channels) or (channels, samples): average the short axis
            samples = samples.mean(axis=1 if samples.shape[1] < samples.shape[0] else 0)
        if samples.ndim != 1 or samples.size == 0:
            raise DanluError(
                f"audio array must be 1-D (or 2-D with channels) and non-empty, got shape {source.shape}"
            )
        samples = resample(samples, sample_rate, model.sample_rate)
        chunks = array_chunks(samples, model.sample_rate)
        duration = len(samples) / model.sample_rate
        label = name or "<array>"
    elif isinstance(source, bytes):
        samples = load_audio(source, model.sample_rate)
        chunks = array_chunks(samples, model.sample_rate)
        duration = len(samples) / model.sample_rate
        label = name or "<stdin>"
    else:
        info = audio_info(source)
        duration = info.duration

        def chunks(chunk_seconds: float, overlap_seconds: float) -> Iterator[AudioChunk]:
            return iter_audio_chunks(source, model.sample_rate, chunk_seconds, overlap_seconds)

        label = name or str(source)
    text, segments, language = model.transcribe_chunks(chunks, duration, opts, progress)
    return Transcript(
        text=text.strip(),
        segments=segments,
        duration=round(duration, 3),
        source=label,
        language=language,
        elapsed=time.perf_counter() - t0,
    )


def transcribe(
    model_ref: str | Path | SpeechModel,
    audio: str | Path | np.ndarray | bytes | list[str | Path],
    *,
    sample_rate: int | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    trust_code: bool = False,
    dtype: str | None = None,
    **options: Any,
) -> Transcript | list[Transcript]:
    """Transcribe audio with a speech model.

        t = danlu.transcribe("path/to/whisper-tiny.en", "talk.wav", timestamps="word")
        t.text, t.segments[0].start, t.segments[0].words

    audio: a file path, a list of paths (-> a list of Transcripts), the bytes of a file, or a numpy
    array with sample_rate=. options: language, beam_size, timestamps ("word" | "segment" | "none"),
    chunk_length, batch_size, kenlm, hotwords, hotword_weight. dtype: "float32" or "int8" (CTC
    models: their Linear layers dynamically quantized, on CPU)."""
    opts = speech_options(**options)
    model = (
        model_ref
        if isinstance(model_ref, SpeechModel)
        else load_speech(
            model_ref, device=device, trust_remote_code=trust_remote_code, trust_code=trust_code, dtype=dtype
        )
    )
    if isinstance(audio, list | tuple):
        return [transcribe_one(model, a, opts) for a in audio]
    return transcribe_one(model, audio, opts, sample_rate=sample_rate)


# ---------------------------------------------------------------------------- the command


def limit_heap_growth() -> None:
    """Keep the memory of a long transcription flat (glibc only; `danlu transcribe` calls this, the
    Python API leaves the process's allocator alone).

    After a large buffer is freed glibc raises its mmap threshold (up to 32 MB), so later model
    activations come from the heap, which fragments: over a 30-minute file the resident size crept
    from 600 to 700 MB and kept growing. A fixed 1 MB threshold keeps large buffers in mmap,
    returned to the system when freed (peak 576 MB at 5 and at 30 minutes)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; setting it also stops the dynamic raise
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to do
        pass


@dataclass
class Job:
    source: Path | bytes
    label: str  # shown and used in failure messages
    out_name: str  # relative output path without extension


def expand_inputs(audio: list[str]) -> list[Job]:
    """Files, folders (recursively) and '-' (the bytes on stdin) as jobs; a missing path fails early."""
    import sys

    from danlu.speech.audio import find_audio

    if not audio:
        raise DanluError("no audio given; pass files, folders or '-' for stdin")
    jobs: list[Job] = []
    for a in audio:
        if a == "-":
            if sys.stdin.isatty():
                raise DanluError("'-' reads audio from stdin, but stdin is a terminal; pipe a file in")
            data = sys.stdin.buffer.read()
            jobs.append(Job(data, "<stdin>", "stdin"))
            continue
        p = Path(a)
        if p.is_dir():
            for f in find_audio([p]):
                jobs.append(Job(f, str(f), str(f.relative_to(p).with_suffix(""))))
        else:
            for f in find_audio([p]):
                jobs.append(Job(f, str(f), f.stem))
    seen: dict[str, int] = {}
    for j in jobs:  # two inputs named alike must not overwrite each other's output
        n = seen.get(j.out_name, 0)
        seen[j.out_name] = n + 1
        if n:
            j.out_name = f"{j.out_name}-{n + 1}"
    return jobs


def run_command(
    model_ref: str,
    audio: list[str],
    *,
    output_format: str = "txt",
    output_dir: Path | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    trust_code: bool = False,
    dtype: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    **options: Any,
) -> int:
    """`danlu transcribe`: returns the number of inputs that failed (each already reported)."""
    from danlu import fileio
    from danlu.speech.audio import audio_info

    if output_format not in OUTPUT_FORMATS:
        raise choose_from(output_format, OUTPUT_FORMATS, "--output-format")
    opts = speech_options(**options)
    jobs = expand_inputs(audio)
    limit_heap_growth()
    failures: list[str] = []
    durations: dict[int, float] = {}
    for i, j in enumerate(jobs):  # headers first: unreadable files are reported before the model loads
        if isinstance(j.source, Path):
            try:
                durations[i] = audio_info(j.source).duration
            except DanluError as e:
                failures.append(str(e))
                warn(f"error: {e}")
    if len(failures) == len(jobs):
        warn(f"error: all {len(jobs)} inputs failed")
        return len(failures)
    model = load_speech(
        model_ref, device=device, trust_remote_code=trust_remote_code, trust_code=trust_code, dtype=dtype
    )
    if opts.language is not None and isinstance(model, CTCRecognizer):
        raise DanluError(f"--language is for Whisper models; '{model.path}' is a CTC model of one language")
    with progress_bar(quiet, len(jobs), sum(durations.values())) as (advance_file, advance_audio):
        for i, j in enumerate(jobs):
            if isinstance(j.source, Path) and i not in durations:
                advance_file()
                continue
            try:
                t = transcribe_one(model, j.source, opts, progress=advance_audio, name=j.label)
            except DanluError as e:
                failures.append(str(e))
                warn(f"error: {e}")
                advance_file()
                continue
            words = opts.timestamps == "word"
            if output_dir is not None:
                fileio.write_text(
                    Path(output_dir) / f"{j.out_name}.{output_format}", t.render(output_format, words)
                )
            elif output_format == "json" and len(jobs) > 1:
                echo(json.dumps(t.to_dict(words), ensure_ascii=False))
            elif len(jobs) > 1:
                echo(f"==> {j.label} <==\n{t.render(output_format, words).rstrip()}\n")
            else:
                echo(t.render(output_format, words).rstrip("\n"))
            advance_file()
    if failures:
        warn(f"error: {len(failures)} of {len(jobs)} inputs failed; the others were transcribed")
    elif output_dir is not None and not quiet:
        warn(f"wrote {len(jobs)} {output_format} file(s) to {output_dir}")
    return len(failures)


class progress_bar:
    """A rich bar over files and audio seconds; nothing when quiet or not on a terminal."""

    def __init__(self, quiet: bool, files: int, seconds: float) -> None:
        import sys

        self.on = not quiet and sys.stderr.isatty()
        self.files, self.seconds = files, seconds

    def __enter__(self) -> tuple[Callable[[], None], Progress]:
        if not self.on:
            return (lambda: None), (lambda _s: None)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.__enter__()
        f = self.bar.add_task("files", total=self.files)
        a = self.bar.add_task("audio seconds", total=max(int(self.seconds), 1))
        return (lambda: self.bar.advance(f)), (lambda s: self.bar.advance(a, s))

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self.bar.__exit__(None, None, None)
