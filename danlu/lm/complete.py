"""Text in, text out, for any loaded language model (danlu/lm/load.py): `complete`,
`stream_text` and `token_logprobs` encode the prompts, generate with danlu's engine for its
own GPT (danlu/lm/generate.py) or with transformers' generate for other causal LMs
(danlu/lm/hf_generate.py), with the same options (danlu/lm/options.py), and decode. The
public `danlu.generate` and `danlu.generate_stream` are `generate` and `generate_stream` here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from danlu.errors import DanluError
from danlu.lm import hf_generate
from danlu.lm.generate import generate_tokens, stream_tokens
from danlu.lm.load import LoadedLM, load_cached
from danlu.lm.options import GenerationOptions, make_options


@dataclass
class Completion:
    prompt_index: int
    sequence_index: int
    prompt: str
    text: str  # the new text, cut before a stop string
    token_ids: list[int]  # the new tokens (up to the EOS or the token that completed a stop string)
    finish_reason: str  # "eos" | "stop" | "length"
    logprobs: list[float] | None = None  # log-probability of each new token under the model

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def encode_prompts(lm: LoadedLM, prompts: list[str], opts: GenerationOptions) -> list[list[int]]:
    """Token ids of each prompt, checked against the model's context (truncated from the
    left with opts.truncate_prompt)."""
    out = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise DanluError(f"prompt {i} is a {type(prompt).__name__}, not a string")
        out.append(fit_prompt(lm, lm.tokenizer.encode(prompt), opts, i))
    return out


def fit_prompt(lm: LoadedLM, ids: list[int], opts: GenerationOptions, index: int = 0) -> list[int]:
    """Prompt `index`'s token ids checked against the model's context (truncated from the
    left with opts.truncate_prompt)."""
    # danlu's own models decode past their context (a sliding window); beam search and
    # transformers' models need prompt and new tokens to fit
    slide = lm.is_danlu and opts.num_beams == 1
    limit = None if lm.block_size is None else lm.block_size - (0 if slide else opts.max_new_tokens)
    if limit is not None and limit < 1:
        raise DanluError(
            f"max_new_tokens {opts.max_new_tokens} leaves no room for a prompt in the model's context "
            f"of {lm.block_size} tokens; use at most {lm.block_size - 1}"
        )
    if not ids:
        raise DanluError(f"prompt {index} is empty; give at least one token of text")
    if limit is not None and len(ids) > limit:
        if not opts.truncate_prompt:
            room = f"the model's context of {lm.block_size}"
            if not slide:
                room += f" minus max_new_tokens {opts.max_new_tokens}"
            raise DanluError(
                f"prompt {index} has {len(ids)} tokens but {room} allows {limit}; shorten it"
                f"{'' if slide else ', lower max_new_tokens'} or truncate it from the left"
                " (--truncate-prompt, truncate_prompt=True)"
            )
        ids = ids[-limit:]
    return ids


def complete(
    lm: LoadedLM, prompts: list[str], opts: GenerationOptions, *, logprobs: bool = False
) -> list[Completion]:
    """num_return_sequences completions per prompt, in prompt order."""
    opts.validate()
    ids = encode_prompts(lm, prompts, opts)
    if lm.is_danlu:
        new = generate_tokens(lm.model, ids, opts, lm.pad_token_id, decode=lm.tokenizer.decode)
    else:
        new = hf_generate.generate(lm, ids, opts)
    n = opts.num_return_sequences
    results = []
    for r, tokens in enumerate(new):
        p = r // n
        c = completion_of(lm, prompts[p], tokens, opts, p, r % n)
        c.logprobs = token_logprobs(lm, ids[p], tokens) if logprobs else None
        results.append(c)
    return results


def completion_of(
    lm: LoadedLM, prompt: str, tokens: list[int], opts: GenerationOptions, prompt_index: int = 0,
    sequence_index: int = 0,
) -> Completion:
    """The Completion of `prompt` given its new tokens (up to an EOS or a stop string)."""
    eos = set(opts.eos_ids)
    body = tokens[:-1] if tokens and tokens[-1] in eos else tokens
    text = lm.tokenizer.decode(body)
    cut = _stop_index(text, opts.stop)
    if cut is not None:
        reason, text = "stop", text[:cut]
    elif len(body) < len(tokens):
        reason = "eos"
    else:
        reason = "length"
    return Completion(prompt_index, sequence_index, prompt, text, list(tokens), reason)


def stream_text(
    lm: LoadedLM, prompt: str, opts: GenerationOptions, on_token: Callable[[int], None] | None = None
) -> Iterator[str]:
    """The completion of one prompt as text pieces, as the tokens come (num_beams=1 and
    num_return_sequences=1). Text that might begin a stop string is held back until it
    cannot. `on_token` sees each new token id first (the server counts them there, and
    stops a stream whose client went away by raising from it)."""
    opts.validate(stream=True)
    if opts.num_return_sequences > 1:
        raise DanluError("streaming gives one sequence; set num_return_sequences=1")
    (ids,) = encode_prompts(lm, [prompt], opts)
    return stream_ids(lm, ids, opts, on_token)


def stream_ids(
    lm: LoadedLM, ids: list[int], opts: GenerationOptions, on_token: Callable[[int], None] | None = None
) -> Iterator[str]:
    """stream_text for a prompt already in token ids (fitted to the context: fit_prompt),
    such as a rendered chat (danlu/lm/chat.py)."""
    opts.validate(stream=True)
    tokens = _danlu_stream(lm, ids, opts) if lm.is_danlu else hf_generate.stream(lm, ids, opts)
    if on_token is not None:
        tokens = _observed(tokens, on_token)
    return _pieces(lm, tokens, opts)


def _observed(tokens: Iterator[int], on_token: Callable[[int], None]) -> Iterator[int]:
    for tok in tokens:
        on_token(tok)
        yield tok


def _pieces(lm: LoadedLM, tokens: Iterator[int], opts: GenerationOptions) -> Iterator[str]:
    pieces = Pieces(lm, opts)
    for tok in tokens:
        piece = pieces.push(tok)
        if piece:
            yield piece
        if pieces.done:
            return
    piece = pieces.close()
    if piece:
        yield piece


class Pieces:
    """The text of a sequence of new tokens, handed out in pieces as it becomes final: up to
    the EOS token or before a stop string; text that might begin a stop string is held back
    until it cannot, a character split across tokens until it is whole. `push` each token,
    then `close` (both return the new piece, maybe empty)."""

    def __init__(self, lm: LoadedLM, opts: GenerationOptions) -> None:
        self.decode, self.stop = lm.tokenizer.decode, opts.stop
        self.eos = set(opts.eos_ids)
        self.hold = max((len(s) for s in opts.stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0  # characters handed out
        self.done = False

    def push(self, tok: int) -> str:
        if self.done:
            return ""
        if tok in self.eos:
            return self.close()
        self.ids.append(tok)
        text = self.decode(self.ids)
        cut = _stop_index(text, self.stop)
        if cut is not None:
            self.done = True
            return self._take(text, cut)
        if text.endswith("\ufffd"):
            return ""  # a character split across tokens: wait for the rest
        return self._take(text, len(text) - self.hold)

    def close(self) -> str:
        if self.done:
            return ""
        self.done = True
        text = self.decode(self.ids)
        cut = _stop_index(text, self.stop)
        return self._take(text, len(text) if cut is None else cut)

    def _take(self, text: str, end: int) -> str:
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent : end], end
        return piece


def _stop_index(text: str, stop: list[str]) -> int | None:
    found = [i for s in stop if (i := text.find(s)) >= 0]
    return min(found) if found else None


def _danlu_stream(lm: LoadedLM, ids: list[int], opts: GenerationOptions) -> Iterator[int]:
    steps = stream_tokens(lm.model, [ids], opts, lm.pad_token_id, decode=lm.tokenizer.decode)
    for (tok,) in steps:
        if tok is None:
            return
        yield tok


def token_logprobs(lm: LoadedLM, prompt_ids: list[int], new_ids: list[int]) -> list[float]:
    """log p(token | everything before it) of each new token under the model (before any
    temperature or filtering). A sequence longer than the model's context is scored the way
    it was generated: each token after the first `block_size` sees the `block_size` tokens
    before it (one batch of windows); the rest come from one pass over the first window."""
    if not new_ids:
        return []
    ids = list(prompt_ids) + list(new_ids)
    first, block = len(prompt_ids), lm.block_size
    head = ids if block is None else ids[:block]
    rows = [head]  # row 0 scores the new tokens at positions 1..len(head)-1
    late = [] if block is None else list(range(max(first, block), len(ids)))
    rows += [ids[t - block : t] for t in late]  # type: ignore[operator]
    with torch.inference_mode():
        first_pass = _log_softmax(lm, [head])[0]
        picked = [float(first_pass[t - 1, ids[t]]) for t in range(first, len(head))]
        if late:
            windows = _log_softmax(lm, rows[1:])
            picked += [float(windows[i, -1, ids[t]]) for i, t in enumerate(late)]
    return [round(v, 6) for v in picked]


def _log_softmax(lm: LoadedLM, rows: list[list[int]]) -> torch.Tensor:
    """Next-token log-probabilities (rows, positions, vocab) for equal-length rows."""
    seq = torch.tensor(rows, dtype=torch.long, device=lm.device)
    if lm.is_danlu:
        was_training = lm.model.training
        lm.model.eval()
        logits = lm.model(seq)
        lm.model.train(was_training)
    else:
        logits = lm.model(input_ids=seq).logits
    return torch.log_softmax(logits.float(), dim=-1)


def generate(
    model_ref: str | Path,
    prompt: str | list[str],
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
    engine: str = "auto",
    **options: object,
) -> str | list[str] | list[list[str]]:
    """Completion of `prompt` by the model `model_ref` names (a danlu run folder, a Hugging
    Face folder, a GGUF file or a hub id; loaded once per process; engine: "auto", "danlu"
    or "transformers", danlu/lm/load.py). `options` are GenerationOptions
    fields (max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, num_beams,
    num_return_sequences, stop, seed, truncate_prompt, dtype, ...).

    A string prompt gives a string, a list of prompts a list; with num_return_sequences > 1
    each prompt gives a list of sequences. `danlu.generate(...)` is this function."""
    dtype = options.get("dtype")
    lm = load_cached(
        model_ref, trust_remote_code=trust_remote_code, dtype=dtype, device=device, engine=engine  # type: ignore[arg-type]
    )
    opts = make_options(lm, **options)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise DanluError("no prompts given")
    texts = [c.text for c in complete(lm, prompts, opts)]
    n = opts.num_return_sequences
    per_prompt: list[str] | list[list[str]] = (
        texts if n == 1 else [texts[i : i + n] for i in range(0, len(texts), n)]
    )
    return per_prompt[0] if isinstance(prompt, str) else per_prompt


def generate_stream(
    model_ref: str | Path,
    prompt: str,
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
    engine: str = "auto",
    **options: object,
) -> Iterator[str]:
    """The completion of one prompt as text pieces while it is generated (same options as
    `generate`; num_beams=1). `danlu.generate_stream(...)` is this function."""
    if not isinstance(prompt, str):
        raise DanluError("stream takes one prompt (a string)")
    dtype = options.get("dtype")
    lm = load_cached(
        model_ref, trust_remote_code=trust_remote_code, dtype=dtype, device=device, engine=engine  # type: ignore[arg-type]
    )
    return stream_text(lm, prompt, make_options(lm, **options))
