"""Speech recognition with CTC: the loss over (log-probabilities, output lengths), greedy
decoding to text, word and character error rates (jiwer), and the evaluation output of
audio runs (metrics.json, predictions.csv, report.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from danlu.config import TaskConfig
from danlu.ctc_decode import CTCDecoder
from danlu.errors import DanluError
from danlu.tasks import make_loss


class CTCLoss:
    """F.ctc_loss with blank 0 over padded targets (0 = padding, never a character): mean
    over the batch of each utterance's loss divided by its target length; impossible
    alignments (output shorter than the transcript) count zero instead of infinity."""

    def __call__(self, output: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        log_probs, out_lengths = output
        target_lengths = (y > 0).sum(1)
        return F.ctc_loss(
            log_probs.transpose(0, 1).float(),  # (T, B, V)
            y,
            out_lengths,
            target_lengths,
            blank=0,
            reduction="mean",
            zero_infinity=True,
        )


def ctc_loss(cfg: TaskConfig, y: torch.Tensor, n_classes: int) -> CTCLoss:
    return CTCLoss()


def greedy_ids(log_probs: torch.Tensor, length: int) -> list[int]:
    """Best path: argmax per frame, merge repeats, drop blanks (0)."""
    from danlu.ctc_decode import greedy

    return greedy(log_probs[:length].float().numpy()).ids


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus WER and CER (errors over reference words/characters), as jiwer computes them."""
    import jiwer

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


def make_decoder(cfg: Any, schema: Any) -> Any:
    """The run's CTC decoder (danlu/ctc_decode.py) from task.decoder and the saved word list."""
    from danlu.ctc_decode import CTCDecoder

    words = None
    if cfg.lexicon == "train":
        if schema.words is None:
            raise DanluError(
                "task.decoder.lexicon: train needs the training transcripts' words, which this run "
                "folder predates; retrain it, or set task.decoder.lexicon: null"
            )
        words = schema.words
    return CTCDecoder(schema.vocab, cfg.type, cfg.beam_size, words)


class SpeechRecognitionTask:
    kind = "speech_recognition"
    metric_names = ["loss", "wer", "cer"]

    def __init__(self, cfg: TaskConfig, schema: Any) -> None:
        loss = "ctc" if cfg.loss == "auto" else cfg.loss
        if ":" not in loss and loss != "ctc":
            raise DanluError(f"task.loss: speech recognition trains with ctc, not '{loss}'")
        if not schema.vocab:
            raise DanluError("speech recognition needs a character vocabulary (data.audio.vocab)")
        self.vocab = list(schema.vocab)
        self.out_dim = len(self.vocab) + 1  # + blank
        self.loss_name = loss
        self.criterion = make_loss(loss, cfg, torch.zeros(0), self.out_dim)
        self.decoder = make_decoder(cfg.decoder, schema)
        # set to a list, decode_batch also appends each utterance's best-path text there
        self.best_paths: list[str] | None = None
        self.best_path = CTCDecoder(self.vocab)

    def loss(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(output, y)

    def text(self, ids: list[int]) -> str:
        return "".join(self.vocab[i - 1] for i in ids if 0 < i <= len(self.vocab))

    def decode_batch(self, output: Any) -> list[str]:
        log_probs, lengths = output
        log_probs = log_probs.float().cpu()
        rows = [log_probs[b, : int(lengths[b])] for b in range(len(log_probs))]
        if self.best_paths is not None:  # the final evaluation's greedy figures, same forward pass
            g = self.best_path
            self.best_paths += [g.text(g.decode(r).ids) for r in rows]
        d = self.decoder
        return [d.text(d.decode(r).ids) for r in rows]

    def target(self, y: torch.Tensor) -> list[str]:
        return [self.text([int(i) for i in row if i > 0]) for row in y]

    def metrics(self, refs: np.ndarray, hyps: np.ndarray) -> dict[str, Any]:
        return error_rates(list(refs), list(hyps))


# --------------------------------------------------------------------------- evaluation output
def evaluate_audio_run(
    run: Any, cfg: Any, split: str, data: Any, plots: bool, trust_code: bool = False
) -> dict[str, Any]:
    """`danlu evaluate` of an audio run: one of its splits, or a manifest / folder given with
    --data, featurized with the run's saved preprocessing."""
    from danlu.data.speech import eval_split
    from danlu.models.ctc import load_recognizer

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
