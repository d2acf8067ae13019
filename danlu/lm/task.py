"""Next-token prediction: cross-entropy over the vocabulary; perplexity = exp(loss)."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from danlu.config import TaskConfig
from danlu.errors import DanluError
from danlu.tasks.losses import make_loss


class LanguageModelingTask:
    kind = "language_modeling"
    metric_names = ["loss", "perplexity"]
    keeps_outputs = False  # (tokens x vocab) logits are never gathered for metrics
    unit = "tok"  # throughput is shown in tokens/s

    def __init__(self, cfg: TaskConfig, schema: Any, tokenizer: Any = None) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        loss = "next_token" if cfg.loss == "auto" else cfg.loss
        if ":" not in loss and loss != "next_token":
            raise DanluError(f"task.loss: language modeling uses next_token (cross-entropy), not '{loss}'")
        self.out_dim = schema.vocab_size
        self.loss_name = loss
        self.criterion = make_loss(loss, cfg, torch.zeros(0), schema.vocab_size)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(output.reshape(-1, output.shape[-1]), y.reshape(-1))

    def decode(self, output: torch.Tensor) -> np.ndarray:
        return output.float().numpy()

    def target(self, y: torch.Tensor) -> np.ndarray:
        return y.numpy()

    def metrics_from_loss(self, loss: float) -> dict[str, float]:
        return {"perplexity": math.exp(min(loss, 50.0))}

    def sample(self, model: torch.nn.Module) -> str | None:
        """A short text from the model as it is now, sampled like nanoGPT's sample.py
        (temperature 0.8, top-k 200) on a copy of the model with its own seeded generator,
        so the weights' layout and the training's random stream are left untouched."""
        cfg, tok = self.cfg, self.tokenizer
        if not cfg.sample_tokens or tok is None:
            return None
        from danlu.lm.generate import generate_tokens
        from danlu.lm.options import GenerationOptions

        gpt = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft (LoRA)
        eos = tok.eos_token_id
        try:
            prompt = tok.encode(cfg.sample_prompt) if cfg.sample_prompt else []
        except DanluError:  # e.g. a character the text never had: start from EOS instead
            prompt = []
        start = cfg.sample_prompt if prompt else ""
        prompt = prompt or ([eos] if eos is not None else [0])
        n = cfg.sample_tokens  # past the context the window slides, as in nanoGPT's sample.py
        t = cfg.sample_temperature or None
        opts = GenerationOptions(max_new_tokens=n, temperature=t, top_k=200 if t else None, seed=0,
                                 eos_token_id=eos)
        ids = generate_tokens(copy.deepcopy(gpt), [prompt], opts)[0]
        return start + tok.decode([i for i in ids if i != eos])
