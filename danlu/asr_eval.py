"""Speech recognition evaluation: `danlu evaluate MODEL --manifest FILE`.

A manifest lists audio files (relative to the manifest's folder, or absolute) and their reference
transcripts, as CSV, TSV or JSONL. Hypotheses and references are normalised the same way
(lower-case, punctuation stripped, numbers written as words: each can be turned off) and scored
with jiwer: corpus WER and CER, per-utterance WER, the worst utterances, and the real-time factor.
Results go to asr_metrics.json and asr_report.md; the normalisation used is stated in both.
"""

from __future__ import annotations

import csv
import json
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danlu.errors import DanluError, choose_from

AUDIO_COLUMNS = ("audio", "audio_path", "audio_filepath", "path", "file", "filename", "wav")
TEXT_COLUMNS = ("text", "reference", "transcript", "transcription", "sentence")
NORMALIZERS = ("lower", "punct", "numbers")
WORST = 10


@dataclass
class Row:
    number: int  # 1-based data row
    audio: Path
    reference: str


# ---------------------------------------------------------------------------- manifest


def read_manifest(path: str | Path) -> list[Row]:
    """Rows of a CSV/TSV (header row) or JSONL manifest; every audio file must exist."""
    path = Path(path)
    if not path.is_file():
        raise DanluError(f"manifest '{path}' does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DanluError(f"cannot read manifest '{path}': {e}") from None
    if suffix in (".jsonl", ".json", ".ndjson"):
        records = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise DanluError(f"manifest '{path}' line {i}: not JSON ({e})") from None
            if not isinstance(rec, dict):
                raise DanluError(f"manifest '{path}' line {i}: expected a JSON object per line")
            records.append(rec)
    else:
        delimiter = "\t" if suffix in (".tsv", ".tab") else ","
        records = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not records:
        raise DanluError(f"manifest '{path}' has no rows")
    columns = list(records[0].keys())
    audio_col = _pick(columns, AUDIO_COLUMNS, path, "audio path")
    text_col = _pick(columns, TEXT_COLUMNS, path, "reference text")
    rows = []
    for n, rec in enumerate(records, 1):
        audio, ref = rec.get(audio_col), rec.get(text_col)
        if not audio or not str(audio).strip():
            raise DanluError(f"manifest '{path}' row {n}: empty '{audio_col}'")
        if ref is None or not str(ref).strip():
            raise DanluError(f"manifest '{path}' row {n}: empty reference text in '{text_col}'")
        file = Path(str(audio).strip()).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        if not file.is_file():
            raise DanluError(f"manifest '{path}' row {n}: audio file '{file}' does not exist")
        rows.append(Row(n, file, str(ref)))
    return rows


def _pick(columns: list[str], candidates: tuple[str, ...], path: Path, what: str) -> str:
    lower = {c.lower().strip(): c for c in columns if c}
    for c in candidates:
        if c in lower:
            return lower[c]
    raise DanluError(
        f"manifest '{path}' has no {what} column (columns: {', '.join(map(str, columns))}); "
        f"name it one of: {', '.join(candidates)}"
    )


# ---------------------------------------------------------------------------- normalisation

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))


def number_to_words(n: int) -> str:
    """English words for an integer: 1205 -> 'one thousand two hundred five'."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return f"{number_to_words(high)} {name}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def _number_words(match: re.Match[str]) -> str:
    whole, frac = match.group(1).replace(",", ""), match.group(2)
    words = number_to_words(int(whole))
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


def parse_normalize(spec: str | None) -> tuple[str, ...]:
    """'lower,punct,numbers' (the default) / 'none' / any subset."""
    if spec is None:
        return NORMALIZERS
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if parts in ([], ["none"]):
        return ()
    for p in parts:
        if p not in NORMALIZERS:
            raise choose_from(p, (*NORMALIZERS, "none"), "--normalize step")
    return tuple(p for p in NORMALIZERS if p in parts)


def normalize(text: str, steps: tuple[str, ...] = NORMALIZERS) -> str:
    text = unicodedata.normalize("NFKC", text)
    if "numbers" in steps:
        text = re.sub(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\w])", _number_words, text)
    if "lower" in steps:
        text = text.lower()
    if "punct" in steps:
        # keep apostrophes inside words (don't, o'clock); everything else of category P or S goes
        text = re.sub(r"(?<=\w)'(?=\w)", "\0", text)
        text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text).replace("\0", "'")
    return " ".join(text.split())


# ---------------------------------------------------------------------------- evaluation


def default_output_dir(model_ref: str, manifest: Path) -> Path:
    """A danlu run folder keeps its evaluations; otherwise beside the manifest, per model."""
    model = Path(model_ref)
    if (model / "model.json").is_file():
        return model / f"eval-{manifest.stem}"
    name = model.name if model.exists() else model_ref.replace("/", "--")
    return manifest.parent / f"{manifest.stem}-eval-{name or 'model'}"


def evaluate_manifest(
    model_ref: str,
    manifest: str | Path,
    *,
    output_dir: str | Path | None = None,
    normalize_steps: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    trust_code: bool = False,
    quiet: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Transcribe every manifest row and score it; writes asr_metrics.json and asr_report.md."""
    import jiwer

    from danlu import fileio
    from danlu.asr import load_cached, make_options, transcribe_one

    manifest = Path(manifest)
    steps = parse_normalize(normalize_steps)
    opts = make_options(**options)
    rows = read_manifest(manifest)
    out = Path(output_dir) if output_dir is not None else default_output_dir(str(model_ref), manifest)
    model = load_cached(model_ref, device=device, trust_remote_code=trust_remote_code, trust_code=trust_code)
    utterances = []
    audio_seconds = elapsed = 0.0
    t_start = time.perf_counter()
    from danlu.asr import progress_bar

    with progress_bar(quiet, len(rows), 0.0) as (advance_file, _):
        for row in rows:
            t = transcribe_one(model, row.audio, opts)
            ref, hyp = normalize(row.reference, steps), normalize(t.text, steps)
            wer = jiwer.wer(ref, hyp) if ref else float(bool(hyp))
            utterances.append(
                {
                    "row": row.number,
                    "audio": str(row.audio),
                    "reference": row.reference,
                    "hypothesis": t.text,
                    "reference_normalized": ref,
                    "hypothesis_normalized": hyp,
                    "wer": wer,
                    "duration": t.duration,
                    "seconds": t.elapsed,
                }
            )
            audio_seconds += t.duration
            elapsed += t.elapsed
            advance_file()
    refs = [u["reference_normalized"] for u in utterances]
    hyps = [u["hypothesis_normalized"] for u in utterances]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    metrics = {
        "wer": words.wer,
        "cer": chars.cer,
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "reference_words": sum(len(r.split()) for r in refs),
        "utterances": len(utterances),
        "audio_seconds": round(audio_seconds, 3),
        "transcribe_seconds": round(elapsed, 3),
        "rtf": elapsed / audio_seconds if audio_seconds else 0.0,
        "wall_seconds": round(time.perf_counter() - t_start, 3),
    }
    result = {
        "model": str(model_ref),
        "model_kind": model.kind,
        "manifest": str(manifest),
        "normalization": list(steps),
        "options": {k: v for k, v in vars(opts).items() if v is not None},
        "decoder": model.describe_decoder(opts),
        "metrics": metrics,
        "worst": sorted(utterances, key=lambda u: (-u["wer"], u["row"]))[:WORST],
        "utterances": utterances,
    }
    fileio.write_json(out / "asr_metrics.json", result)
    fileio.write_text(out / "asr_report.md", report(result))
    result["output_dir"] = str(out)
    return result


def report(result: dict[str, Any]) -> str:
    m = result["metrics"]
    norm = ", ".join(result["normalization"]) or "none"
    lines = [
        f"# Speech recognition: {Path(result['model']).name}",
        "",
        f"Model `{result['model']}` ({result['model_kind']}) on manifest `{result['manifest']}`: "
        f"{m['utterances']} utterances, {m['audio_seconds'] / 60:.1f} min of audio.",
        "",
        f"Decoder: {result['decoder']}.",
        "",
        f"Normalization before scoring: {norm} (lower = lower-case, punct = punctuation removed, "
        "numbers = digits written as words).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| WER | {m['wer']:.4f} |",
        f"| CER | {m['cer']:.4f} |",
        f"| substitutions / deletions / insertions | {m['substitutions']} / {m['deletions']} / "
        f"{m['insertions']} |",
        f"| reference words | {m['reference_words']} |",
        f"| real-time factor | {m['rtf']:.4f} |",
        "",
        f"## Worst {len(result['worst'])} utterances",
        "",
        "| row | WER | reference | hypothesis |",
        "|---|---|---|---|",
    ]
    for u in result["worst"]:
        ref = u["reference_normalized"].replace("|", "\\|")
        hyp = u["hypothesis_normalized"].replace("|", "\\|")
        lines.append(f"| {u['row']} | {u['wer']:.3f} | {ref} | {hyp} |")
    return "\n".join(lines) + "\n"


def print_summary(result: dict[str, Any], echo: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["metrics"]
    norm = ", ".join(result["normalization"]) or "none"
    echo(
        f"{m['utterances']} utterances, {m['audio_seconds']:.1f} s of audio; normalization: {norm}; "
        f"decoder: {result['decoder']}"
    )
    table = Table("metric", "value")
    for k in ("wer", "cer", "rtf"):
        table.add_row(k, f"{m[k]:.4f}")
    Console().print(table)
    echo(f"report: {Path(result['output_dir']) / 'asr_report.md'}")
