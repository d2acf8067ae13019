"""Generation with transformers' models (kind "hf-causal-lm", danlu/lm/load.py): danlu's
options (danlu/lm/options.py) as a GenerationConfig, transformers' `generate` for the
tokens, and a thread plus a queue for streaming."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch

from danlu.errors import DanluError, one_line
from danlu.lm.load import LoadedLM
from danlu.lm.options import GenerationOptions


def generation_kwargs(lm: LoadedLM, opts: GenerationOptions) -> dict[str, Any]:
    """Our options as transformers' generate arguments (every one set explicitly, so the
    model's generation_config.json does not add e.g. a default top_k)."""
    from transformers import GenerationConfig

    gc = GenerationConfig(
        max_new_tokens=opts.max_new_tokens,
        do_sample=opts.do_sample,
        num_beams=opts.num_beams,
        num_return_sequences=opts.num_return_sequences,
        eos_token_id=opts.eos_ids or None,
        pad_token_id=lm.pad_token_id,
        bos_token_id=getattr(getattr(lm.model, "generation_config", None), "bos_token_id", None),
    )
    if opts.do_sample:
        gc.temperature = opts.temperature
        gc.top_k = opts.top_k if opts.top_k is not None else 0
        gc.top_p = opts.top_p if opts.top_p is not None else 1.0
        gc.min_p = opts.min_p
    if opts.repetition_penalty is not None:
        gc.repetition_penalty = opts.repetition_penalty
    if opts.num_beams > 1:
        gc.length_penalty = opts.length_penalty
    kwargs: dict[str, Any] = {"generation_config": gc}
    if opts.stop:
        gc.stop_strings = list(opts.stop)
        kwargs["tokenizer"] = lm.tokenizer.hf
    return kwargs


def _hf_batch(lm: LoadedLM, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in ids)
    pad = lm.pad_token_id
    rows = [[pad] * (width - len(p)) + p for p in ids]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in ids]
    dev = lm.device
    return torch.tensor(rows, device=dev), torch.tensor(mask, device=dev)


def _seed(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)


def generate(lm: LoadedLM, ids: list[list[int]], opts: GenerationOptions) -> list[list[int]]:
    input_ids, mask = _hf_batch(lm, ids)
    kwargs = generation_kwargs(lm, opts)
    _seed(opts.seed)
    try:
        with torch.inference_mode():
            out = lm.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
    except ValueError as e:
        raise DanluError(f"generation failed: {one_line(e)}") from None
    eos = set(opts.eos_ids)
    results = []
    for row in out[:, input_ids.shape[1] :].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        results.append(row[:end])
    return results


def stream(lm: LoadedLM, ids: list[int], opts: GenerationOptions) -> Iterator[int]:
    """transformers' generate on a thread, handing each new token over through a queue."""
    input_ids, mask = _hf_batch(lm, [ids])
    kwargs = generation_kwargs(lm, opts)
    q: queue.Queue[Any] = queue.Queue()
    done = object()

    class Streamer:
        prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True  # generate first puts the prompt
                return
            for tok in value.reshape(-1).tolist():
                q.put(int(tok))

        def end(self) -> None:
            q.put(done)

    def work() -> None:
        try:
            _seed(opts.seed)
            with torch.inference_mode():
                lm.model.generate(input_ids=input_ids, attention_mask=mask, streamer=Streamer(), **kwargs)
        except BaseException as e:  # handed to the consumer
            q.put(e)
            q.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise DanluError(f"generation failed: {one_line(item)}") from None
        yield item
