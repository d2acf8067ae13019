"""The corpus kind: a language model's text, its hooks (danlu/kinds.py) in one place.

registry.KINDS names `danlu.lm.kind:CORPUS`, so the core reaches the language-model
package only by that name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from danlu.data.frames import Prepared
from danlu.errors import DanluError
from danlu.kinds import Kind, Trained

LM_TYPES = ("gpt", "causal_lm")  # danlu's GPT; a Llama-family checkpoint (danlu/lm/finetune.py)


def is_corpus(cfg: Any, task_type: str, model_cfg: Any) -> bool:
    lm = getattr(model_cfg, "type", "") in LM_TYPES
    return task_type == "language_modeling" or (task_type == "auto" and lm)


def prepare(cfg: Any, task_type: str, seed: int, model_cfg: Any = None, pretrained: Any = None) -> Prepared:
    """The text cut into blocks of model.block_size (danlu/lm/data.py)."""
    from danlu.lm.data import build

    if model_cfg is None or getattr(model_cfg, "type", "") not in LM_TYPES:
        raise DanluError(
            "task.type language_modeling trains a model of type gpt (or causal_lm); set model.type: gpt"
        )
    schema, tokenizer, splits = build(cfg, model_cfg.block_size, seed, pretrained)
    return Prepared(schema, tokenizer, splits, {})  # type: ignore[arg-type]


def finish(t: Trained) -> dict[str, Any]:
    """After training: the tokenizer.json, then loss and perplexity on val."""
    from danlu.lm.evaluation import finish_run

    t.prepared.preprocessor.save(t.run.tokenizer)
    # the model is the last evaluation's when that was the best: its numbers stand
    history = t.result.history
    last = history[-1] if history else {}
    known = None
    if t.result.best_epoch == len(history) - 1 and "val.loss" in last:
        known = {"loss": last["val.loss"], "perplexity": last["val.perplexity"]}
    return finish_run(t.run, t.model, t.task, t.prepared.splits["val"], t.cfg.eval.plots, known)


def evaluate(run: Any, cfg: Any, split: str, data: str | Path | None, plots: bool, trust_code: bool) -> Any:
    from danlu.lm.evaluation import evaluate_run

    return evaluate_run(run, cfg, split, data, plots)


def load(run_dir: str | Path, trust_code: bool = False) -> Any:
    """A language-model run predicts no rows: it generates text."""
    raise DanluError(
        f"{run_dir}: a language-model run generates text rather than predicting rows;"
        f" use danlu generate {run_dir} (or danlu.generate)"
    )


def task(cfg: Any, schema: Any, y_train: Any, preprocessor: Any) -> Any:
    """registry.TASKS' language_modeling entry."""
    from danlu.lm.task import LanguageModelingTask

    return LanguageModelingTask(cfg, schema, preprocessor)


CORPUS = Kind(
    "corpus",
    serve="completions",
    detect=is_corpus,
    prepare=prepare,
    load=load,
    finish=finish,
    evaluate=evaluate,
    explain="danlu.explain.lm:explainer",  # prompt tokens -> the generated token (danlu/explain/lm.py)
    export_onnx="danlu.lm.onnx:graph",  # logits for a sequence of token ids
)
