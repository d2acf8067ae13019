"""Speech recognition evaluation and its reports, for every path that scores transcripts:

- `evaluate_audio_run` / `finish_audio`: `danlu evaluate` (and the end of `danlu train`) of a danlu
  speech run: metrics.json, predictions.csv, report.md;
- `evaluate_manifest`: `danlu evaluate MODEL --manifest FILE` for any speech model.

Both score with `error_rates` after the one text normaliser (danlu/speech/normalize.py):
`eval.normalizer` of a run (default: none, the transcripts as decoded), `--normalize` /
`--normalizer` of a manifest (default: lower,punct,numbers; `whisper-en` for Whisper's).

A manifest lists audio files (relative to the manifest's folder, or absolute) and their reference
transcripts, as CSV, TSV or JSONL. Hypotheses and references are normalised the same way
(lower-case, punctuation stripped, numbers written as words: each can be turned off) and scored
with jiwer: corpus WER and CER, per-utterance WER, the worst utterances, and the real-time factor.
Results go to asr_metrics.json and asr_report.md; the normalisation used is stated in both.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.errors import DanluError
from danlu.speech.normalize import Normalizer, make_normalizer

AUDIO_COLUMNS = ("audio", "audio_path", "audio_filepath", "path", "file", "filename", "wav")
TEXT_COLUMNS = ("text", "reference", "transcript", "transcription", "sentence")
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


# ---------------------------------------------------------------------------- scoring


def error_rates(refs: list[str], hyps: list[str], normalizer: Any = None) -> dict[str, float]:
    """Corpus WER and CER (errors over reference words/characters), as jiwer computes them, of
    the transcripts after `normalizer` (None: as they are)."""
    import jiwer

    if normalizer is not None:
        refs, hyps = [normalizer(r) for r in refs], [normalizer(h) for h in hyps]
    if not refs:
        return {"wer": float("nan"), "cer": float("nan")}
    # jiwer rejects empty references (the error rate has no denominator there): leave them out
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    words = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs]) if pairs else None
    chars = jiwer.process_characters([r for r, _ in pairs], [h for _, h in pairs]) if pairs else None
    return {
        "wer": float(words.wer) if words else float("nan"),
        "cer": float(chars.cer) if chars else float("nan"),
    }


# ---------------------------------------------------------------------------- a danlu speech run


def evaluate_audio_run(
    run: Any, cfg: Any, split: str, data: Any, plots: bool, trust_code: bool = False
) -> dict[str, Any]:
    """`danlu evaluate` of an audio run: one of its splits, or a manifest / folder given with
    --data, featurized with the run's saved preprocessing."""
    from danlu.speech.data import eval_split
    from danlu.speech.recognizer import load_recognizer

    rec = load_recognizer(run.path, trust_code)
    split_data, frame, name = eval_split(cfg, rec.preprocessor, rec.schema, split, data)
    out = run.for_data(data) if data is not None else run  # another file: beside the run's results
    return finish_audio(out, cfg, rec.model, rec.task, rec.schema, split_data, frame, name, plots)


def finish_audio(
    run: Any,
    cfg: Any,
    model: torch.nn.Module,
    task: Any,
    schema: Any,
    data: Any,
    frame: Any,
    split: str,
    plots: bool,
) -> dict[str, Any]:
    """Evaluate an audio run on one split; write metrics.json, predictions.csv and report.md
    (and, for a fine-tuned Hugging Face model, the transformers folder hf/)."""
    import copy

    import pandas as pd

    from danlu import fileio
    from danlu.training.trainer import evaluate_split

    if hasattr(model, "export") and not (run.path / "hf" / "config.json").is_file():
        model.export(run.path / "hf", schema.vocab, schema.sample_rate)
    frame = frame.reset_index(drop=True)
    model.eval()
    compare = task.kind == "speech_recognition" and task.decoder.kind != "greedy"
    norm = None
    if task.kind == "speech_recognition":
        task = copy.copy(task)  # the evaluation's normaliser and best paths, not the caller's task
        norm = make_normalizer(cfg.eval.normalizer, default=())
        task.normalizer = norm
    if compare:  # what the decoder adds over the best path, decoded from the same log-probabilities
        task.best_paths = []
    metrics, decoded = evaluate_split(model, task, data, torch.device("cpu"))
    summary = {"split": split, "rows": len(data), "task": task.kind, "metrics": metrics}
    if task.kind == "speech_recognition":
        summary["decoder"] = task.decoder.describe()
        summary["normalization"] = list(norm.steps) if norm else []
        if compare:
            best_path = task.metrics(task.target(data.y), task.best_paths)
            metrics.update(wer_greedy=best_path["wer"], cer_greedy=best_path["cer"])
    if task.kind == "classification":
        classes = np.asarray(schema.classes, dtype=object)
        preds = pd.DataFrame({"prediction": classes[decoded.argmax(axis=1)]})
        for j, name in enumerate(schema.class_names):
            preds[f"proba_{name}"] = decoded[:, j]
        table = pd.concat([frame, preds], axis=1)
    else:
        refs = task.target(data.y)
        table = frame.assign(reference=refs, prediction=list(decoded))
        n = norm or Normalizer(())
        table["errors"] = [_word_errors(n(r), n(h)) for r, h in zip(refs, decoded, strict=True)]
        summary["audio_seconds"] = round(sum(len(w) for w in data.waves) / data.featurizer.sample_rate, 2)
    run.write_metrics(summary)
    with fileio.atomic_path(run.predictions) as tmp:
        table.to_csv(tmp, index=False)
    if task.kind == "classification":
        from danlu.evaluation.report import write_report

        write_report(
            run.report,
            run.plots,
            title=f"danlu run {run.path.name}",
            task="classification",
            split=split,
            metrics=metrics,
            history=run.read_history(),
            steps=run.read_steps(),
            y_true=task.target(data.y),
            output=decoded,
            names=schema.class_names,
            details={"run": run.path.name, "task": "classification (audio)", "model": cfg.model.type},
            plots=plots,
        )
    else:
        _write_asr_report(run, split, metrics, table, plots, summary["decoder"], norm)
    return summary


def _word_errors(ref: str, hyp: str) -> int:
    """Word-level edit distance of one utterance."""
    a, b = ref.split(), hyp.split()
    row = list(range(len(b) + 1))
    for i, wa in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, wb in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (wa != wb))
    return row[-1]


def _write_asr_report(
    run: Any, split: str, metrics: dict[str, Any], table: Any, plots: bool, decoder: str, norm: Any
) -> None:
    from danlu import fileio

    lines = [
        f"# danlu run {run.path.name}",
        "",
        f"Decoder: {decoder}"
        + (" (`_greedy`: the best path, for comparison)." if "wer_greedy" in metrics else "."),
        "",
        f"Normalization before scoring: {norm.describe() if norm else 'none'}.",
        "",
        f"| metric ({split} split, {len(table)} utterances) | value |",
        "| --- | ---: |",
        *(f"| {k} | {v:.4f} |" for k, v in metrics.items()),
    ]
    worst = table[table["errors"] > 0].sort_values("errors", ascending=False).head(10)
    if len(worst):
        lines += [
            "",
            "## Utterances with the most word errors",
            "",
            "| audio | reference | prediction | errors |",
            "| --- | --- | --- | ---: |",
        ]
        lines += [f"| {r.audio} | {r.reference} | {r.prediction} | {r.errors} |" for r in worst.itertuples()]
    if plots:
        from danlu.evaluation.report import plot_history

        if plot_history(run.read_history(), run.plots / "history.png", run.read_steps()):
            lines += ["", "![training history](plots/history.png)"]
    fileio.write_text(run.report, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- a manifest


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
    normalizer: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    trust_code: bool = False,
    quiet: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Transcribe every manifest row and score it; writes asr_metrics.json and asr_report.md.
    normalize_steps (--normalize) or normalizer (--normalizer, e.g. whisper-en): one of them."""
    import jiwer

    from danlu import fileio
    from danlu.speech.recognizer import load_speech, speech_options
    from danlu.speech.transcribe import progress_bar, transcribe_one

    manifest = Path(manifest)
    if normalize_steps is not None and normalizer is not None:
        raise DanluError("--normalize and --normalizer both name the text normaliser; give one")
    norm = make_normalizer(normalizer if normalizer is not None else normalize_steps)
    opts = speech_options(**options)
    rows = read_manifest(manifest)
    out = Path(output_dir) if output_dir is not None else default_output_dir(str(model_ref), manifest)
    model = load_speech(model_ref, device=device, trust_remote_code=trust_remote_code, trust_code=trust_code)
    utterances = []
    audio_seconds = elapsed = 0.0
    t_start = time.perf_counter()
    with progress_bar(quiet, len(rows), 0.0) as (advance_file, _):
        for row in rows:
            t = transcribe_one(model, row.audio, opts)
            ref, hyp = norm(row.reference), norm(t.text)
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
        "normalization": list(norm.steps),
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
        "numbers = digits written as words; whisper_english = Whisper's English normaliser).",
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
