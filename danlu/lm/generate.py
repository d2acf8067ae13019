"""danlu's decoding engine for its own models, GPT (danlu/lm/model.py) and the Llama family
(danlu/lm/llama.py; same forward signature and KVCache): greedy decoding, sampling and beam
search.

Prompts of different lengths are left-padded into one batch; the prompt runs through the
model once (prefill) and every later step feeds one token per sequence through the
preallocated KV cache. Logits processors follow Hugging Face's order (repetition penalty,
temperature, top-k, top-p, min-p) and beam search follows its default algorithm, so with the
same weights the tokens match `GPT2LMHeadModel.generate`.

Everything that grows with the number of steps (output tokens, attention mask, the seen-token
table of the repetition penalty) is allocated once before the first step. Before each
generation danlu's CPU decoding path is installed on the model (`danlu.lm.cpu.accelerate`:
its weights are laid out in memory for the batch size, their values never change), and
`dtype` works on a cast copy. Text in, text out for any loaded model (this engine or
transformers' generate) is danlu/lm/complete.py; why beam search and the repetition penalty
are written here rather than taken from transformers: ARCHITECTURE.md, "Generation engines".
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from danlu.errors import DanluError
from danlu.lm import cpu
from danlu.lm.model import GPT, KVCache
from danlu.lm.options import DTYPES, GenerationOptions

# ---------------------------------------------------------------------------- public API


def generate_tokens(
    model: GPT,
    input_ids: list[list[int]],
    opts: GenerationOptions | None = None,
    pad_token_id: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> list[list[int]]:
    """New tokens for each prompt (num_return_sequences rows per prompt, in prompt order).

    A sequence ends after its EOS token (which is kept) or once its text contains one of
    `opts.stop` (needs `decode`, token ids -> text); the rest is not returned.
    """
    opts = opts or GenerationOptions()
    opts.validate()
    if opts.num_beams > 1:
        return _beam_search(model, input_ids, opts, pad_token_id)
    run = _Run(model, input_ids, opts, pad_token_id, decode)
    with run.session():
        for _ in run.steps():
            pass
    return run.result()


def stream_tokens(
    model: GPT,
    input_ids: list[list[int]],
    opts: GenerationOptions | None = None,
    pad_token_id: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> Iterator[list[int | None]]:
    """Like generate_tokens, one step at a time: per row the new token id, or None for a
    row that had already finished."""
    opts = opts or GenerationOptions()
    opts.validate(stream=True)
    run = _Run(model, input_ids, opts, pad_token_id, decode)  # bad input fails here, not later
    return _stream(run)


def _stream(run: _Run) -> Iterator[list[int | None]]:
    with run.session():
        for tokens, alive in run.steps():
            yield [t if a else None for t, a in zip(tokens.tolist(), alive, strict=True)]


# ---------------------------------------------------------------------------- set-up


def _cast(model: GPT, dtype: str | None) -> GPT:
    """The model in `dtype`: a copy if that differs, so the caller's model keeps its
    weights."""
    if dtype is not None and model.lm_head.weight.dtype != DTYPES[dtype]:
        model = cpu.cast(copy.deepcopy(model), DTYPES[dtype])
    return model


def _left_pad(
    model: GPT, input_ids: list[list[int]], opts: GenerationOptions, repeat: int, pad: int, slide: bool
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(token ids (rows, P), key mask (rows, P + max_new_tokens) or None, P) with each
    prompt repeated `repeat` times; the mask is None when no prompt is padded. With `slide`
    the text may outgrow the context (each token then sees the last block_size tokens), so
    only the prompt has to fit; without it, prompt and new tokens together."""
    if (
        not isinstance(input_ids, list | tuple)
        or not input_ids
        or not all(isinstance(p, list | tuple) for p in input_ids)
    ):
        raise DanluError("input_ids must be a non-empty list of token-id lists")
    cfg = model.config
    limit = cfg.block_size if slide else cfg.block_size - opts.max_new_tokens
    if limit < 1:
        raise DanluError(
            f"max_new_tokens {opts.max_new_tokens} leaves no room for a prompt in the model's "
            f"block_size {cfg.block_size} with beam search; use at most {cfg.block_size - 1}"
        )
    prompts = []
    for i, p in enumerate(input_ids):
        if not p:
            raise DanluError(f"prompt {i} is empty; give at least one token")
        if len(p) > limit:
            if not opts.truncate_prompt:
                room = f"block_size {cfg.block_size}" if slide else (
                    f"block_size {cfg.block_size} - max_new_tokens {opts.max_new_tokens}"
                )
                raise DanluError(
                    f"prompt {i} has {len(p)} tokens but {room} allows at most {limit}; shorten it"
                    " or set truncate_prompt=True"
                )
            p = p[-limit:]  # keep the most recent context
        prompts.append(list(p))

    P = max(len(p) for p in prompts)
    rows = [[pad] * (P - len(p)) + p for p in prompts for _ in range(repeat)]
    try:
        idx = torch.tensor(rows, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DanluError(f"input_ids must hold integer token ids: {e}") from None
    if int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size:
        raise DanluError(
            f"input_ids hold token ids outside the vocabulary [0, {cfg.vocab_size}); "
            f"found {int(idx.min())}..{int(idx.max())}"
        )
    device = next(model.parameters()).device
    if all(len(p) == P for p in prompts):
        return idx.to(device), None, P
    mask = torch.ones(len(rows), P + opts.max_new_tokens, dtype=torch.bool)
    for r, p in enumerate(prompts[r // repeat] for r in range(len(rows))):
        mask[r, : P - len(p)] = False
    return idx.to(device), mask.to(device), P


def _pad_id(model: GPT, opts: GenerationOptions, pad_token_id: int | None) -> int:
    if pad_token_id is None:
        pad_token_id = opts.eos_ids[0] if opts.eos_ids else 0
    if not 0 <= pad_token_id < model.config.vocab_size:
        raise DanluError(
            f"pad_token_id {pad_token_id} is outside the vocabulary [0, {model.config.vocab_size})"
        )
    return pad_token_id


@contextlib.contextmanager
def _eval_mode(model: GPT) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Hugging Face's RepetitionPenaltyLogitsProcessor on the tokens marked in `seen`."""
    if penalty is None or penalty == 1.0:
        return scores
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen[:, : scores.shape[-1]], penalized, scores)


def _sampling_filters(scores: torch.Tensor, opts: GenerationOptions) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p, as Hugging Face's warpers (keep >= 1 token)."""
    if opts.temperature != 1.0:
        scores = scores / opts.temperature
    if opts.top_k is not None:
        kth = torch.topk(scores, min(opts.top_k, scores.shape[-1])).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if opts.top_p is not None and opts.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - opts.top_p)
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    if opts.min_p is not None:
        probs = scores.softmax(dim=-1)
        drop = probs < opts.min_p * probs.amax(dim=-1, keepdim=True)
        drop.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)
        scores = scores.masked_fill(drop, -float("inf"))
    return scores


# ---------------------------------------------------------------------------- greedy / sampling


class _Run:
    """State of one greedy or sampling generation over a batch of prompts."""

    def __init__(
        self,
        model: GPT,
        input_ids: list[list[int]],
        opts: GenerationOptions,
        pad_token_id: int | None,
        decode: Callable[[list[int]], str] | None,
    ) -> None:
        if opts.stop and decode is None:
            raise DanluError("stop strings need a decode function (token ids -> text)")
        self.opts = opts
        self.decode = decode
        self.pad = _pad_id(model, opts, pad_token_id)
        self.model = _cast(model, opts.dtype)
        self.idx, self.mask, self.prompt_len = _left_pad(
            self.model, input_ids, opts, opts.num_return_sequences, self.pad, slide=True
        )
        rows = self.idx.shape[0]
        cpu.accelerate(self.model, rows)
        self.out = torch.full((rows, opts.max_new_tokens), self.pad, dtype=torch.long, device=self.idx.device)
        self.n_steps = 0
        self.stopped_at: dict[int, int] = {}  # row -> generated length, for stop strings

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with _eval_mode(self.model):
            yield

    def steps(self) -> Iterator[tuple[torch.Tensor, list[bool]]]:
        """Per step: the new tokens (rows,) and which rows were still running before it."""
        opts, model = self.opts, self.model
        rows, P = self.idx.shape
        param = next(model.parameters())
        generator = None
        if opts.seed is not None:
            generator = torch.Generator(device=param.device).manual_seed(opts.seed)
        dev = param.device
        eos = torch.tensor(opts.eos_ids, dtype=torch.long, device=dev) if opts.eos_ids else None
        track_finished = eos is not None or bool(opts.stop)
        finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        # the mask covers the tokens still to come, so a step passes a view, not a new mask
        mask = self.mask
        next_pos = None
        if mask is not None:
            next_pos = mask[:, :P].sum(dim=1, keepdim=True)
        seen = None
        if opts.repetition_penalty not in (None, 1.0):
            # one spare column takes the padding so it never counts as seen
            seen = torch.zeros(rows, model.config.vocab_size + 1, dtype=torch.bool, device=dev)
            marks = self.idx if mask is None else self.idx.masked_fill(~mask[:, :P], seen.shape[1] - 1)
            seen.scatter_(1, marks, True)
        stop_window = max((len(s) for s in opts.stop), default=0) + 8

        block = model.config.block_size
        with torch.inference_mode():
            length = min(P + opts.max_new_tokens, block)
            cache = KVCache(model.config, rows, length, model.compute_dtype, param.device)
            logits = model(
                self.idx,
                attention_mask=None if mask is None else mask[:, :P],
                kv_cache=cache,
                last_only=True,
            )
        for t in range(opts.max_new_tokens):
            with torch.inference_mode():
                scores = logits[:, -1].float()
                if seen is not None:
                    scores = _repetition_penalty(scores, seen, opts.repetition_penalty)
                if opts.do_sample:
                    scores = _sampling_filters(scores, opts)
                    probs = scores.softmax(dim=-1)
                    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                else:
                    tokens = scores.argmax(dim=-1)
                alive = [True] * rows
                if track_finished:
                    alive = (~finished).tolist()
                    tokens = tokens.masked_fill(finished, self.pad)
                    if eos is not None:
                        finished |= torch.isin(tokens, eos)
                self.out[:, t] = tokens
                self.n_steps = t + 1
                if opts.stop:
                    self._check_stop(t, alive, finished, stop_window)
            yield tokens, alive
            if t + 1 == opts.max_new_tokens or (track_finished and bool(finished.all())):
                break
            with torch.inference_mode():
                if seen is not None:
                    seen.scatter_(1, tokens[:, None], True)
                if cache.length < block:
                    logits = _decode_step(model, tokens[:, None], mask, next_pos, cache)
                else:
                    # past the context: as nanoGPT's sample.py, run the last block_size
                    # tokens afresh (learned positions shift, so cached keys are stale)
                    end, first = P + t + 1, P + t + 1 - block
                    window = torch.cat([self.idx[:, first:], self.out[:, max(0, first - P) : t + 1]], dim=1)
                    window_mask = None if mask is None else mask[:, first:end]
                    logits = model(window, attention_mask=window_mask, last_only=True)

    def _check_stop(self, t: int, alive: list[bool], finished: torch.Tensor, window: int) -> None:
        assert self.decode is not None
        for r, running in enumerate(alive):
            if not running or r in self.stopped_at:
                continue
            # a stop string completed by this token lies within the last `window` tokens
            text = self.decode(self.out[r, max(0, t + 1 - window) : t + 1].tolist())
            if any(s in text for s in self.opts.stop):
                self.stopped_at[r] = t + 1
                finished[r] = True

    def result(self) -> list[list[int]]:
        eos = set(self.opts.eos_ids)
        results = []
        for r, tokens in enumerate(self.out[:, : self.n_steps].tolist()):
            end = self.stopped_at.get(r, len(tokens))
            for i, tok in enumerate(tokens[:end]):
                if tok in eos:
                    end = i + 1
                    break
            results.append(tokens[:end])
        return results


# ---------------------------------------------------------------------------- beam search


def _decode_step(
    model: GPT,
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
    next_pos: torch.Tensor | None,
    cache: KVCache,
) -> torch.Tensor:
    """One new token per row through the KV cache; advances `next_pos` in place."""
    logits = model(
        tokens,
        attention_mask=None if mask is None else mask[:, : cache.length + 1],
        position_ids=next_pos,
        kv_cache=cache,
        last_only=True,
    )
    if next_pos is not None:
        next_pos += 1
    return logits


def _beam_search(
    model: GPT, input_ids: list[list[int]], opts: GenerationOptions, pad_token_id: int | None
) -> list[list[int]]:
    """Hugging Face's default beam search (early_stopping=False, its stopping heuristic and
    length penalty), for every prompt at once: row b * num_beams + i is beam i of prompt b."""
    pad = _pad_id(model, opts, pad_token_id)
    model = _cast(model, opts.dtype)
    nb, max_new = opts.num_beams, opts.max_new_tokens
    idx, mask, P = _left_pad(model, input_ids, opts, nb, pad, slide=False)
    rows = idx.shape[0]
    cpu.accelerate(model, rows)
    B = rows // nb
    V = model.config.vocab_size
    param = next(model.parameters())
    dev = param.device
    eos = torch.tensor(opts.eos_ids, dtype=torch.long, device=dev)
    # keep enough candidates that num_beams survive even if the best ones all end in EOS
    keep = max(2, 1 + len(opts.eos_ids)) * nb
    in_top_beams = torch.arange(keep, device=dev) < nb
    batch_offset = torch.arange(B, device=dev)[:, None] * nb
    lp = opts.length_penalty

    running = torch.full((B, nb, max_new), pad, dtype=torch.long, device=dev)
    running_scores = torch.zeros(B, nb, device=dev)
    running_scores[:, 1:] = -1e9  # all beams start identical: expand only the first
    done = running.clone()
    done_scores = torch.full((B, nb), -1e9, device=dev)
    done_final = torch.zeros(B, nb, dtype=torch.bool, device=dev)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=dev)
    seen = None
    if opts.repetition_penalty not in (None, 1.0):
        seen = torch.zeros(rows, V + 1, dtype=torch.bool, device=dev)
        seen.scatter_(1, idx if mask is None else idx.masked_fill(~mask[:, :P], V), True)
    next_pos = None if mask is None else mask[:, :P].sum(dim=1, keepdim=True)

    with _eval_mode(model), torch.inference_mode():
        cache = KVCache(model.config, rows, P + max_new, model.compute_dtype, param.device)
        logits = model(
            idx,
            attention_mask=None if mask is None else mask[:, :P],
            kv_cache=cache,
            last_only=True,
        )
        for step in range(max_new):
            log_probs = F.log_softmax(logits[:, -1].float(), dim=-1)
            if seen is not None:
                log_probs = _repetition_penalty(log_probs, seen, opts.repetition_penalty)
            log_probs = (log_probs.view(B, nb, V) + running_scores[:, :, None]).view(B, nb * V)
            top_scores, top_index = torch.topk(log_probs, keep)
            source = top_index // V
            tokens = top_index % V
            candidates = torch.take_along_dim(running, source[:, :, None], dim=1)
            candidates[:, :, step] = tokens
            last = step + 1 == max_new
            ends = torch.full_like(tokens, True, dtype=torch.bool) if last else torch.isin(tokens, eos)

            # the best num_beams candidates that go on
            alive_scores = top_scores + ends.float() * -1e9
            pick = torch.topk(alive_scores, nb).indices
            running = torch.take_along_dim(candidates, pick[:, :, None], dim=1)
            running_scores = torch.take_along_dim(alive_scores, pick, dim=1)
            running_source = torch.take_along_dim(source, pick, dim=1)

            # candidates that just ended replace worse finished hypotheses
            just_done = ends & in_top_beams[None, :]
            final_scores = top_scores / ((step + 1) ** lp)
            final_scores = final_scores + (~can_improve).float() * -1e9 + (~just_done) * -1e9
            merged_scores = torch.cat((done_scores, final_scores), dim=1)
            best = torch.topk(merged_scores, nb).indices
            done = torch.take_along_dim(torch.cat((done, candidates), dim=1), best[:, :, None], 1)
            done_scores = torch.take_along_dim(merged_scores, best, dim=1)
            done_final = torch.take_along_dim(torch.cat((done_final, just_done), dim=1), best, 1)

            # stop once no running beam can beat the worst finished one (HF's heuristic)
            best_possible = running_scores[:, :1] / ((step + 1) ** lp)
            worst_done = torch.where(done_final, done_scores.min(dim=1, keepdim=True).values, -1e9)
            can_improve = can_improve & (best_possible > worst_done).any(dim=-1, keepdim=True)
            if not bool(can_improve.any()) or bool(ends.all()):
                break

            order = (running_source + batch_offset).view(-1)
            cache.reorder(order)
            step_tokens = running[:, :, step].reshape(rows, 1)
            if seen is not None:
                seen = seen.index_select(0, order)
                seen.scatter_(1, step_tokens, True)
            logits = _decode_step(model, step_tokens, mask, next_pos, cache)

    eos_set = set(opts.eos_ids)
    results = []
    for beams in done[:, : opts.num_return_sequences].tolist():
        for tokens in beams:
            end = next((i + 1 for i, t in enumerate(tokens) if t in eos_set), len(tokens))
            results.append(tokens[:end])
    return results
