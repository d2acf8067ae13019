"""A trained speech run: loading it (`load_recognizer` -> `Recognizer`, whose
`transcribe(waveform, sample_rate)` gives text, frame log-probabilities and word times) and
evaluating it (`finish_audio`: metrics.json, predictions.csv, report.md).

Application code over a run folder, so it sits above models/ and tasks/ (which it uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.models.ctc import word_times


# --------------------------------------------------------------------------- a trained run
@dataclass
class Transcription:
    text: str
    log_probs: np.ndarray  # (frames, vocab + 1), blank at 0
    frame_seconds: float  # time between output frames
    words: list[tuple[str, float, float]]  # (word, start s, end s)


class Recognizer:
    """A trained speech run: `transcribe` (speech_recognition) or `classify` (audio classes)."""

    def __init__(self, run_dir: str | Path, trust_code: bool = False) -> None:
        from danlu import models, tasks
        from danlu.config import TaskConfig, parse_model
        from danlu.data.speech import SpeechPreprocessor, SpeechSchema
        from danlu.errors import DanluError
        from danlu.registry import reading_saved
        from danlu.run import RunDir
        from danlu.training.checkpoint import load_weights

        run = RunDir.open(run_dir)
        meta = run.read_model_json()
        if meta.get("schema", {}).get("input_kind") != "audio":
            raise DanluError(f"{run.path}: not a speech run (its inputs are not audio)")
        self.run = run
        self.schema = SpeechSchema.from_dict(meta["schema"])
        self.preprocessor = SpeechPreprocessor.from_state(meta["preprocessor"])
        self.featurizer = self.preprocessor.featurizer
        model_cfg = parse_model(meta["model"])
        if model_cfg.type == "wav2vec2_ctc":  # the run's own export, not the original checkpoint
            model_cfg = model_cfg.model_copy(update={"path": str(run.path / "hf")})
        with reading_saved(run.model_json, trust_code):  # user code only from a trusted folder
            self.task = tasks.build(
                TaskConfig.model_validate(meta["task"]), self.schema, torch.zeros(0, dtype=torch.long)
            )
            self.model = models.build(model_cfg, self.schema, self.task.out_dim)
        load_weights(self.model, run.weights)
        self.model.eval()
        self.sample_rate = self.schema.sample_rate

    def _forward(self, waveform: np.ndarray, sample_rate: int) -> Any:
        from danlu.data.audio import resample

        wave = np.asarray(waveform, dtype=np.float32)
        if wave.ndim > 1:
            wave = wave.mean(axis=-1)
        if sample_rate != self.sample_rate:
            wave = resample(wave, sample_rate, self.sample_rate)
        x = self.featurizer(torch.from_numpy(np.ascontiguousarray(wave)))
        with torch.no_grad():
            return self.model(x[None], torch.tensor([len(x)]))

    def log_probs(self, waveform: np.ndarray, sample_rate: int) -> torch.Tensor:
        """(frames, vocab + 1) CTC log-probabilities of one utterance, blank at 0."""
        log_probs, lengths = self._forward(waveform, sample_rate)
        return log_probs[0, : int(lengths[0])].float()

    def transcribe(self, waveform: np.ndarray, sample_rate: int) -> Transcription:
        """CTC transcript of float mono samples at `sample_rate` (resampled as needed), decoded
        the way the run's task.decoder says (greedy unless configured)."""
        from danlu.errors import DanluError

        if self.schema.task != "speech_recognition":
            raise DanluError(f"{self.run.path}: this run classifies audio; use classify()")
        lp = self.log_probs(waveform, sample_rate)
        decoder = self.task.decoder
        best = decoder.decode(lp)
        n_in = len(waveform) * self.sample_rate / sample_rate
        step = n_in / self.sample_rate / max(len(lp), 1)
        if decoder.kind == "greedy":
            words = word_times(lp.argmax(-1).tolist(), self.task.vocab, step)
        else:
            words = [(w, a * step, b * step) for w, a, b in decoder.words_with_frames(best, len(lp))]
        return Transcription(decoder.text(best.ids), lp.numpy(), step, words)

    def classify(self, waveform: np.ndarray, sample_rate: int) -> dict[str, float]:
        """Class probabilities of one clip."""
        logits = self._forward(waveform, sample_rate)
        proba = self.task.decode(logits.float())[0]
        return {name: float(p) for name, p in zip(self.schema.class_names, proba, strict=True)}

    def predict(self, paths: Any) -> list[str]:
        """Transcripts (or class names) of audio files, folders or a manifest's files."""
        return self.predict_frame(paths)["prediction"].tolist()

    def predict_frame(self, paths: Any, proba: bool = False) -> Any:
        """Audio files (or folders, or a manifest with an `audio` column) -> a table of
        predictions: the transcript, or the class (+ probabilities)."""
        import pandas as pd

        from danlu.data.audio import find_audio, load_audio

        files = _input_files(paths)
        rows = []
        for f in find_audio(files):
            wave = load_audio(f, self.sample_rate)
            if self.schema.task == "speech_recognition":
                rows.append({"audio": str(f), "prediction": self.transcribe(wave, self.sample_rate).text})
            else:
                p = self.classify(wave, self.sample_rate)
                row: dict[str, Any] = {"audio": str(f), "prediction": max(p, key=p.get)}
                if proba:
                    row.update({f"proba_{k}": v for k, v in p.items()})
                rows.append(row)
        return pd.DataFrame(rows)


def _input_files(paths: Any) -> list[Path]:
    """A manifest (CSV/TSV/JSONL with an `audio` column) expands to its files."""
    from danlu.data.tabular import FORMATS, read_table

    out: list[Path] = []
    for p in [paths] if isinstance(paths, str | Path) else list(paths):
        p = Path(p)
        if p.is_file() and p.suffix.lower() in FORMATS:
            df = read_table(p)
            if "audio" not in df.columns:
                from danlu.errors import DanluError

                raise DanluError(
                    f"{p}: a manifest needs an 'audio' column; columns are: {', '.join(df.columns)}"
                )
            out.extend(p.parent / str(a) for a in df["audio"])
        else:
            out.append(p)
    return out


def load_recognizer(run_dir: str | Path, trust_code: bool = False) -> Recognizer:
    """A trained speech run folder -> Recognizer (transcribe / classify / predict_frame);
    trust_code: let its model.json name user code."""
    return Recognizer(run_dir, trust_code)


def evaluate_audio_run(
    run: Any, cfg: Any, split: str, data: Any, plots: bool, trust_code: bool = False
) -> dict[str, Any]:
    """`danlu evaluate` of an audio run: one of its splits, or a manifest / folder given with
    --data, featurized with the run's saved preprocessing."""
    from danlu.data.speech import eval_split

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
    if compare:  # what the decoder adds over the best path, decoded from the same log-probabilities
        task = copy.copy(task)
        task.best_paths = []
    metrics, decoded = evaluate_split(model, task, data, torch.device("cpu"))
    summary = {"split": split, "rows": len(data), "task": task.kind, "metrics": metrics}
    if task.kind == "speech_recognition":
        summary["decoder"] = task.decoder.describe()
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
        table["errors"] = [_word_errors(r, h) for r, h in zip(refs, decoded, strict=True)]
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
        _write_asr_report(run, split, metrics, table, plots, summary["decoder"])
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
    run: Any, split: str, metrics: dict[str, Any], table: Any, plots: bool, decoder: str
) -> None:
    from danlu import fileio

    lines = [
        f"# danlu run {run.path.name}",
        "",
        f"Decoder: {decoder}"
        + (" (`_greedy`: the best path, for comparison)." if "wer_greedy" in metrics else "."),
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
