"""The corpus kind's `export_onnx` hook: a GPT run's logits for a sequence of token ids.

Inputs `input_ids` (int64, batch x tokens, at most block_size tokens); output `logits`
(float32, batch x tokens x vocabulary). No key/value cache: each call runs the whole
sequence. The run's tokenizer is saved beside the model as tokenizer.json. The parity check
runs on sequences cut from the run's validation text, or on generated ids when the corpus is
not at hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from danlu.errors import DanluError
from danlu.lm.load import load_run
from danlu.lm.model import GPT
from danlu.onnx.graph import Graph, argmax


class Logits(nn.Module):
    """input_ids -> logits of every position (GPT.forward without a cache or a mask)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)


def graph(run_dir: str | Path, trust_code: bool = False) -> Graph:
    lm = load_run(Path(run_dir))
    if not isinstance(lm.model, GPT):
        raise DanluError(f"'{run_dir}' is a causal_lm run: export it with --format hf (ONNX covers GPT runs)")
    model = lm.model.float().eval()
    cfg = model.config
    length = min(cfg.block_size, 32)
    ids, sample_from = _validation_ids(Path(run_dir), lm, length)
    if ids is None:
        rng = np.random.default_rng(0)
        ids, sample_from = rng.integers(0, cfg.vocab_size, (4, length)).astype(np.int64), "generated inputs"
    return Graph(
        module=Logits(model).eval(),
        inputs=["input_ids"],
        outputs=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"}},
        sample=[{"input_ids": ids}],
        sample_from=sample_from,
        preprocessing={
            "inputs": {
                "input_ids": {
                    "dtype": "int64",
                    "outside": "encode the text with tokenizer.json (beside the model);"
                    f" at most {cfg.block_size} tokens (the model's block_size)",
                }
            },
            "decode": "logits[:, t] scores the token after position t (softmax for probabilities)",
            "eos_token_id": lm.eos_token_id,
        },
        predicted=argmax,
        files={"tokenizer.json": Path(run_dir) / "tokenizer.json"},
        about={"graph": "language_model", "task": "language_modeling", "block_size": cfg.block_size},
    )


def _validation_ids(run_dir: Path, lm: object, length: int) -> tuple[np.ndarray | None, str]:
    """Up to 8 sequences of `length` tokens from the end of the run's text (its validation
    part), when the corpus the run names can be read."""
    from danlu import config as config_mod

    try:
        cfg = config_mod.load(run_dir / "config.yaml")
        path = Path(cfg.data.path or cfg.data.val or "")
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
    except (DanluError, OSError, UnicodeDecodeError):
        return None, "generated inputs"
    ids = lm.tokenizer.encode(text[-20_000:]) if text else []  # type: ignore[attr-defined]
    n = min(8, len(ids) // length)
    if n < 2:
        return None, "generated inputs"
    tail = np.asarray(ids[len(ids) - n * length :], dtype=np.int64)
    return tail.reshape(n, length), f"validation text ({n} sequences of {length} tokens)"
