"""Speech recognition with CTC: the loss over (log-probabilities, output lengths), the run's
decoder (danlu/speech/decode.py) and its WER/CER (danlu/speech/evaluation.py `error_rates`).
The evaluation output of audio runs is written by danlu.speech.evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from danlu.config import TaskConfig
from danlu.errors import DanluError
from danlu.speech.decode import CTCDecoder, DecoderOptions, greedy, make_decoder
from danlu.speech.evaluation import error_rates
from danlu.tasks.losses import make_loss


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
    return greedy(log_probs[:length].float().numpy()).ids


def run_decoder(cfg: Any, schema: Any) -> Any:
    """The run's CTC decoder from task.decoder and the saved word list."""
    words = None
    if cfg.lexicon == "train":
        if schema.words is None:
            raise DanluError(
                "task.decoder.lexicon: train needs the training transcripts' words, which this run "
                "folder predates; retrain it, or set task.decoder.lexicon: null"
            )
        words = list(schema.words)
    return make_decoder(["", *schema.vocab], DecoderOptions(cfg.type, cfg.beam_size, words))


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
        self.decoder = run_decoder(cfg.decoder, schema)
        self.normalizer: Any = None  # eval.normalizer, set by the evaluation (None: as decoded)
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
            self.best_paths += [self.best_path.hypothesis(r)[0] for r in rows]
        return [self.decoder.hypothesis(r)[0] for r in rows]

    def target(self, y: torch.Tensor) -> list[str]:
        return [self.text([int(i) for i in row if i > 0]) for row in y]

    def metrics(self, refs: np.ndarray, hyps: np.ndarray) -> dict[str, Any]:
        return error_rates(list(refs), list(hyps), self.normalizer)
