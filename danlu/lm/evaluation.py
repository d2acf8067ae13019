"""Evaluating language models: a run's validation split (`evaluate_run`, `finish_run`: the
metrics.json and report of `danlu train` and `danlu evaluate`), and loss and perplexity of any
loaded language model on any text, with a sliding window (`text_perplexity`).

A text longer than the model's context is scored in windows of `max_length` tokens that
start every `stride` tokens; each token is scored once, in the first window where it is
new, with up to `max_length - stride` tokens of context before it (the recipe of the
Hugging Face perplexity guide, so the numbers compare). stride == max_length gives
disjoint windows (fast, less context); smaller strides give lower, fairer perplexity.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from danlu import fileio, tasks
from danlu.config import RunConfig
from danlu.data.tabular import TensorData
from danlu.errors import DanluError
from danlu.run import RunDir


def windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_new) per window: tokens [begin, end) are fed, and targets at
    absolute positions >= first_new (and > begin) are scored."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        out.append((begin, end, prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return out


def text_perplexity(
    lm: Any, text: str, *, max_length: int | None = None, stride: int | None = None, batch_size: int = 8
) -> dict[str, float]:
    """`lm`: a danlu.lm.load.LoadedLM. Returns loss (mean negative log-likelihood per
    scored token), perplexity, and the token and window counts."""
    context = lm.block_size or getattr(getattr(lm.model, "config", None), "max_position_embeddings", None)
    if max_length is None:
        max_length = context or 1024
    if max_length < 2:
        raise DanluError(f"--max-length must be at least 2 tokens, got {max_length}")
    if context and max_length > context:
        raise DanluError(f"--max-length {max_length} is longer than the model's context ({context} tokens)")
    if stride is None:
        stride = max(1, max_length // 2)
    if not 0 < stride <= max_length:
        raise DanluError(f"--stride must be in 1..{max_length} (the window length), got {stride}")
    ids = lm.tokenizer.encode(text)
    if len(ids) < 2:
        raise DanluError("the text has fewer than two tokens: nothing to score")
    plan = windows(len(ids), max_length, stride)
    device = lm.device
    nll, scored = 0.0, 0
    model = lm.model.eval()
    with torch.inference_mode():
        # windows of the same length run as one batch (all but possibly the last one)
        for i in range(0, len(plan), batch_size):
            group = plan[i : i + batch_size]
            for same in _by_length(group):
                x = torch.tensor([ids[b:e] for b, e, _ in same], device=device)
                logits = model(x)
                logits = getattr(logits, "logits", logits).float()
                targets = x[:, 1:].clone()
                for r, (b, _, first_new) in enumerate(same):
                    keep = max(first_new - b - 1, 0)  # target j+1 is at absolute b + j + 1
                    targets[r, :keep] = -100
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       ignore_index=-100, reduction="sum")
                nll += float(loss)
                scored += int((targets != -100).sum())
    mean = nll / max(scored, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": scored,
            "windows": len(plan), "max_length": max_length, "stride": stride}


def _by_length(group: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    lengths: dict[int, list[tuple[int, int, int]]] = {}
    for w in group:
        lengths.setdefault(w[1] - w[0], []).append(w)
    return list(lengths.values())


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DanluError(f"--text {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DanluError(f"--text {path}: cannot read as UTF-8 text: {e}") from None
    if not text.strip():
        raise DanluError(f"--text {path}: the file is empty")
    return text


def evaluate_run(
    run: RunDir, cfg: RunConfig, split: str, data: str | Path | None, plots: bool
) -> dict[str, Any]:
    """A language-model run on its validation split (its own tokenizer, the same blocks
    as in training), or on a text file with a sliding window (--data)."""
    from danlu.lm.data import build
    from danlu.lm.load import resolve_lm

    lm = resolve_lm(run.path, device="cpu")
    if data is not None:
        metrics = text_perplexity(lm, read_text(data))
        return {"split": Path(data).name, "rows": metrics.pop("windows"), "task": cfg.task.type,
                "metrics": metrics}
    if split not in ("val", "test"):
        raise DanluError(f"--split {split}: a language-model run has a validation split only (val)")
    pretrained = None
    if cfg.model.type == "causal_lm":  # the rows again with the run's transformers tokenizer (chat template)
        from danlu.lm.build import Pretrained

        hf = lm.tokenizer.hf  # type: ignore[attr-defined]
        eos = lm.eos_token_id[0] if isinstance(lm.eos_token_id, list) else lm.eos_token_id
        vocab = lm.model.config.vocab_size
        pretrained = Pretrained(lm.model, hf.backend_tokenizer, eos, cfg.model, vocab, hf=hf)
        data_cfg = cfg.data.model_copy()
        data_cfg.__pydantic_fields_set__.discard("tokenizer")  # config.yaml lists every key
    else:
        data_cfg = cfg.data.model_copy(update={"tokenizer": str(run.tokenizer)})
    schema, tokenizer, splits = build(data_cfg, cfg.model.block_size, cfg.seed, pretrained)
    task = tasks.build(cfg.task, schema, splits["train"].y, tokenizer)
    task.out_dim = lm.model.config.vocab_size
    return finish_run(run, lm.model, task, splits["val"], plots, None)


def finish_run(
    run: RunDir, model: Any, task: Any, val: TensorData, plots: bool, known: dict[str, float] | None
) -> dict[str, Any]:
    """Loss and perplexity over the whole validation split, a short report and curves."""
    from danlu.evaluation.report import plot_history
    from danlu.training.trainer import evaluate_split

    metrics = known or evaluate_split(model, task, val, torch.device("cpu"))[0]
    summary = {"split": "val", "rows": len(val), "tokens": int(val.y.numel()), "task": task.kind,
               "metrics": metrics}
    run.write_metrics(summary)
    curve = plot_history(run.read_history(), run.plots / "history.png", run.read_steps()) if plots else None
    lines = [f"# danlu run {run.path.name}", "", "| metric (validation, all tokens) | value |",
             "| --- | ---: |", *(f"| {k} | {v:.4f} |" for k, v in metrics.items())]
    if curve:
        lines += ["", "![training history](plots/history.png)"]
    fileio.write_text(run.report, "\n".join(lines) + "\n")
    return summary
