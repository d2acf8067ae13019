"""POST /v1/audio/transcriptions: OpenAI's multipart shape over danlu/speech/transcribe.py.

Fields: `file` (the recording), `model`, `response_format` (json, text, srt, vtt,
verbose_json), `language` (Whisper), `timestamp_granularities[]` (`word` adds the words to
verbose_json). The text is what `danlu transcribe` prints for the same file: the same
recognizer, chunking and decoding, on the model's worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from danlu.serve.errors import APIError
from danlu.serve.models import Served

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def transcribe(served: Served, data: bytes, name: str, language: str | None, words: bool) -> Any:
    from danlu.speech.recognizer import CTCRecognizer, speech_options
    from danlu.speech.transcribe import transcribe_one

    model = served.model
    if language is not None and isinstance(model, CTCRecognizer):
        raise APIError(400, "'language' is for Whisper models; this is a CTC model of one language",
                       param="language")
    opts = speech_options(language=language, timestamps="word" if words else "segment")
    return transcribe_one(model, data, opts, name=name)


def render(t: Any, fmt: str, words: bool) -> tuple[Any, str]:
    """(content, media type) of a transcript in OpenAI's response formats."""
    if fmt == "text":
        return t.text.strip() + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return t.to_srt(), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return t.to_vtt(), "text/vtt; charset=utf-8"
    if fmt == "json":
        return {"text": t.text}, "application/json"
    out: dict[str, Any] = {
        "task": "transcribe",
        "language": t.language,
        "duration": t.duration,
        "text": t.text,
        "segments": [
            {"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(t.segments)
        ],
    }
    if words:
        out["words"] = [
            {"word": w.text, "start": w.start, "end": w.end} for s in t.segments for w in s.words
        ]
    return out, "application/json"


async def handle(served: Served, form: Any) -> tuple[Any, str]:
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise APIError(400, "'file' is required: the recording, as a multipart file upload", param="file")
    fmt = str(form.get("response_format") or "json")
    if fmt not in FORMATS:
        raise APIError(400, f"'response_format' {fmt!r} is not one of {', '.join(FORMATS)}",
                       param="response_format")
    granularities = [str(g) for g in form.getlist("timestamp_granularities[]")]
    granularities += [str(g) for g in form.getlist("timestamp_granularities")]
    bad = [g for g in granularities if g not in ("word", "segment")]
    if bad:
        raise APIError(400, f"'timestamp_granularities[]' {bad[0]!r} is not word or segment",
                       param="timestamp_granularities[]")
    words = "word" in granularities
    language = form.get("language") or None
    data = await upload.read()
    if not data:
        raise APIError(400, f"'file' ({upload.filename or 'the upload'}) is empty", param="file")
    loop = asyncio.get_running_loop()
    name = upload.filename or "upload"
    t = await loop.run_in_executor(served.worker, transcribe, served, data, name, language, words)
    return render(t, fmt, words)
