"""Multiple-choice scoring by log-likelihood, the lm-evaluation-harness way: each choice is
a continuation of the context, scored by the sum of its tokens' log-probabilities; the
prediction is the best choice by that sum (accuracy) and by the sum divided by the choice's
length in characters (accuracy_norm, the harness's acc_norm).

The rows are JSONL: {"context": str, "choices": [str, ...], "answer": index or the right
choice's text}. As in the harness, a choice's tokens are those the context + choice text has
beyond the context's own (so a leading space belongs to the choice), whitespace at the end
of the context moves to the choice, and an empty context is scored after the EOS token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from danlu.errors import DanluError


@dataclass
class Question:
    context: str
    choices: list[str]
    answer: int


def read_questions(path: str | Path) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise DanluError(f"--choices {path}: file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"--choices {path}: line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DanluError(f"{where} is not JSON: {e.msg}") from None
        context, choices, answer = (row.get(k) if isinstance(row, dict) else None
                                    for k in ("context", "choices", "answer"))
        if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) and c for c in choices):
            raise DanluError(f"{where}: needs 'context' (text) and 'choices' (two or more non-empty texts)")
        if isinstance(answer, str) and answer in choices:
            answer = choices.index(answer)
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise DanluError(
                f"{where}: 'answer' must be the index (0..{len(choices) - 1}) or the text of one of the"
                f" choices, got {answer!r}"
            )
        out.append(Question(context, choices, answer))
    if not out:
        raise DanluError(f"--choices {path}: no questions in the file")
    return out


def continuation_ids(lm: Any, context: str, choice: str) -> tuple[list[int], list[int]]:
    """The context's tokens and the choice's, split as the harness splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, choice = context[:-spaces], context[-spaces:] + choice
    whole = lm.tokenizer.encode(context + choice)
    ctx = lm.tokenizer.encode(context) if context else []
    if not ctx:
        eos = lm.eos_token_id[0] if isinstance(lm.eos_token_id, list) else lm.eos_token_id
        return [eos if eos is not None else lm.pad_token_id], whole
    return ctx, whole[len(ctx):]


def choice_logprobs(lm: Any, question: Question) -> list[tuple[float, int]]:
    """(sum of the choice tokens' log-probabilities, number of tokens) for every choice."""
    out = []
    context = lm.block_size
    with torch.inference_mode():
        for choice in question.choices:
            ctx, cont = continuation_ids(lm, question.context, choice)
            if not cont:
                raise DanluError(f"choice {choice!r} adds no token to the context {question.context[:40]!r}")
            ids = (ctx + cont)[-(context + 1):] if context else ctx + cont  # the harness keeps the end
            x = torch.tensor([ids[:-1]], device=lm.device)
            logits = lm.model(x)
            logp = getattr(logits, "logits", logits)[0, -len(cont):].float().log_softmax(-1)
            target = torch.tensor(cont, device=lm.device)
            out.append((float(logp.gather(-1, target[:, None]).sum()), len(cont)))
    return out


def score_choices(lm: Any, questions: list[Question]) -> dict[str, float]:
    """accuracy (by summed log-probability) and accuracy_norm (per character of the choice)."""
    right = right_norm = 0
    lm.model.eval()
    for q in questions:
        scores = [s for s, _ in choice_logprobs(lm, q)]
        norm = [s / len(c) for s, c in zip(scores, q.choices, strict=True)]
        right += max(range(len(scores)), key=scores.__getitem__) == q.answer
        right_norm += max(range(len(norm)), key=norm.__getitem__) == q.answer
    n = len(questions)
    return {"accuracy": right / n, "accuracy_norm": right_norm / n, "questions": n}
