"""Continuous batching for danlu's own GPT: one decoding loop per model, where sequences join
the running batch at the next step and leave it on their own (the server's language models,
danlu/serve/text.py).

    decoder = ContinuousDecoder(model, tokenizer.decode, worker, max_rows=16)
    decoder.submit(Sequence(prompt_ids, opts, on_token, on_end))  # from any thread
    decoder.call(fn)  # anything else that uses the model, run between two steps

The loop runs as a job on the model's one worker thread while there is work, and returns when
there is none. Each step it (1) takes what arrived, (2) prefills each new sequence alone
(a batch of one, so its numbers are those of decoding it alone) and copies its keys and values
into a free row of one shared KV cache, (3) lets the sequences that ended leave, (4) feeds one
token per row through the cache, and hands each row its next token.

The cache's columns are shared time: every step writes one column for every row. A sequence
joins with its prompt ending at the current column and the columns before it masked out, and
its positions count its own tokens: a left-padded row of danlu/lm/generate.py, padded later.
When the columns run out the cache moves left past the columns no row uses any more; a prompt
longer than the columns filled so far moves them right. A row that leaves is replaced by the
last row, so the rows in use are always the first n and a step runs on views of them.

What the loop takes: greedy or sampled (temperature, top-k, top-p, min-p, a seed per
sequence), one sequence per prompt, prompt plus new tokens within the context (`batchable`).
Beam search, several sequences per prompt, the repetition penalty, another dtype and text
that outgrows the context go to danlu/lm/generate.py through `call`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import torch

from danlu.lm import cpu
from danlu.lm.generate import _eval_mode, _sampling_filters
from danlu.lm.model import GPT, KVCache
from danlu.lm.options import DTYPES, GenerationOptions


def batchable(model: GPT, prompt_len: int, opts: GenerationOptions) -> bool:
    """Whether the decoding loop takes this sequence (see the module docstring)."""
    same_dtype = opts.dtype is None or DTYPES[opts.dtype] == model.lm_head.weight.dtype
    return (
        opts.num_beams == 1
        and opts.num_return_sequences == 1
        and opts.repetition_penalty in (None, 1.0)
        and same_dtype
        and prompt_len + opts.max_new_tokens <= model.config.block_size
    )


@dataclass
class Sequence:
    """One prompt to continue. `on_token(id)` sees every new token (it may raise to stop the
    sequence: a client that went away); `on_end(reason, error)` is called once, with reason
    "eos" | "stop" | "length" | "gone" | "error". Both run on the worker thread."""

    ids: list[int]
    opts: GenerationOptions
    on_token: Callable[[int], None]
    on_end: Callable[[str, BaseException | None], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    # the loop's state
    new: list[int] = field(default_factory=list)
    start: int = 0  # the first cache column it uses
    position: int = 0  # the position of the token it feeds next
    reason: str | None = None  # set when it ended
    generator: torch.Generator | None = None

    def end(self, reason: str, error: BaseException | None = None) -> None:
        if self.reason is None:
            self.reason = reason
            self.on_end(reason, error)


class ContinuousDecoder:
    def __init__(
        self,
        model: GPT,
        decode: Callable[[list[int]], str],
        worker: Executor,
        max_rows: int = 16,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.model, self.decode, self.worker = model, decode, worker
        self.max_rows = max(1, max_rows)
        self.on_step = on_step  # sees the number of rows of every step (the server's metrics)
        self.inbox: deque[Sequence | tuple[Callable[[], Any], Future[Any]]] = deque()
        self.lock = threading.Lock()
        self.running = False
        self.steps = 0
        self.peak_rows = 0  # most rows in one step
        self.cache: KVCache | None = None  # allocated on first use, kept
        self.mask: torch.Tensor | None = None  # (max_rows, block_size): which columns each row sees
        self.length = 0  # columns filled

    # ---------------------------------------------------------------- from any thread

    def submit(self, seq: Sequence) -> None:
        self._post(seq)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the worker thread, between two steps of the loop."""
        future: Future[Any] = Future()
        self._post((fn, future))
        return future

    @property
    def waiting(self) -> int:
        return len(self.inbox)

    def _post(self, item: Sequence | tuple[Callable[[], Any], Future[Any]]) -> None:
        with self.lock:
            self.inbox.append(item)
            if not self.running:
                self.running = True
                self.worker.submit(self._loop)

    # ---------------------------------------------------------------- the loop

    def _loop(self) -> None:
        rows: list[Sequence] = []  # row r of the cache is rows[r]
        waiting: deque[Sequence] = deque()
        try:
            while True:
                # 1. what arrived: jobs run now, sequences wait for a row
                while self.inbox:
                    item = self.inbox.popleft()
                    if isinstance(item, Sequence):
                        waiting.append(item)
                    else:
                        _run_job(*item)
                # 2. new sequences join while rows are free; each gets its first token
                while waiting and len(rows) < self.max_rows:
                    seq = waiting.popleft()
                    if seq.cancelled.is_set():
                        seq.end("gone")
                        continue
                    logits = self._join(seq, rows)
                    rows.append(seq)
                    self._advance(seq, logits)
                # 3. sequences that ended leave
                self._leave(rows)
                if not rows:
                    with self.lock:
                        if not self.inbox and not waiting:
                            self.running = False
                            return
                    continue
                # 4. one token for every row
                logits = self._step(rows)
                for seq, row_logits in zip(rows, logits, strict=True):
                    self._advance(seq, row_logits)
        except BaseException as e:
            for seq in [*rows, *waiting]:
                seq.end("error", e)
            self.length = 0
            with self.lock:
                self.running = False
                if self.inbox:  # what came meanwhile gets a fresh loop
                    self.running = True
                    self.worker.submit(self._loop)
            raise

    def _join(self, seq: Sequence, rows: list[Sequence]) -> torch.Tensor:
        """Prefill `seq` alone and copy its keys and values into the row after `rows`, ending
        at the current column; its next-token logits."""
        model, row = self.model, len(rows)
        param = next(model.parameters())
        if self.cache is None:
            block = model.config.block_size
            cpu.accelerate(model, self.max_rows)
            self.cache = KVCache(model.config, self.max_rows, block, model.compute_dtype, param.device)
            self.mask = torch.zeros(self.max_rows, block, dtype=torch.bool, device=param.device)
        assert self.mask is not None
        P = len(seq.ids)
        with _eval_mode(model), torch.inference_mode():
            alone = KVCache(model.config, 1, P, model.compute_dtype, param.device)
            logits = model(torch.tensor([seq.ids], device=param.device), kv_cache=alone, last_only=True)
            if self.length < P:  # the prompt is longer than the columns so far: move them right
                self._move_columns(rows, 0, P - self.length)
            seq.start = self.length - P
            for k, v, k1, v1 in zip(self.cache.k, self.cache.v, alone.k, alone.v, strict=True):
                k[row, :, seq.start : self.length] = k1[0]
                v[row, :, seq.start : self.length] = v1[0]
            self.mask[row, : seq.start] = False
            self.mask[row, seq.start : self.length] = True
        seq.position = P
        if seq.opts.seed is not None:
            seq.generator = torch.Generator(device=param.device).manual_seed(seq.opts.seed)
        return logits[0, -1]

    def _step(self, rows: list[Sequence]) -> torch.Tensor:
        """Feed every row its last token; next-token logits (rows, vocab)."""
        assert self.cache is not None and self.mask is not None
        n, model = len(rows), self.model
        if self.length == self.cache.max_len:
            # no column left: drop the ones before the earliest row (each row's text fits
            # the context, so that frees at least one)
            self._move_columns(rows, min(s.start for s in rows), 0)
        dev = self.mask.device
        tokens = torch.tensor([[s.new[-1]] for s in rows], device=dev)
        positions = torch.tensor([[s.position] for s in rows], device=dev)
        self.mask[:n, self.length] = True
        view = object.__new__(KVCache)  # the first n rows of the cache, same storage
        view.k, view.v = [k[:n] for k in self.cache.k], [v[:n] for v in self.cache.v]
        view.max_len, view.length = self.cache.max_len, self.length
        with _eval_mode(model), torch.inference_mode():
            logits = model(tokens, attention_mask=self.mask[:n, : self.length + 1], position_ids=positions,
                           kv_cache=view, last_only=True)
        self.length += 1
        for s in rows:
            s.position += 1
        self.steps += 1
        self.peak_rows = max(self.peak_rows, n)
        if self.on_step is not None:
            self.on_step(n)
        return logits[:, -1]

    def _advance(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Pick `seq`'s next token from its logits, hand it over, and end it if it is done."""
        opts = seq.opts
        with torch.inference_mode():
            scores = logits.float()[None]
            if opts.do_sample:
                probs = _sampling_filters(scores, opts).softmax(dim=-1)
                tok = int(torch.multinomial(probs, 1, generator=seq.generator))
            else:
                tok = int(scores.argmax(dim=-1))
        seq.new.append(tok)
        try:
            seq.on_token(tok)
        except Exception:  # its consumer is gone: the row is freed
            seq.end("gone")
            return
        if tok in opts.eos_ids:
            seq.end("eos")
        elif opts.stop and _stopped(self.decode, seq.new, opts.stop):
            seq.end("stop")
        elif len(seq.new) >= opts.max_new_tokens:
            seq.end("length")

    def _leave(self, rows: list[Sequence]) -> None:
        """Drop the rows that ended (or whose consumer cancelled): the last row takes each one's
        place, so the rows in use stay the first len(rows)."""
        r = 0
        while r < len(rows):
            seq = rows[r]
            if seq.reason is None and not seq.cancelled.is_set():
                r += 1
                continue
            seq.end("gone")  # no-op if it ended on its own
            last = len(rows) - 1
            if r != last:
                self._copy_row(last, r)
                rows[r] = rows[last]
            rows.pop()
        if not rows:
            self.length = 0  # an empty cache starts over at column 0

    # ---------------------------------------------------------------- cache moves

    def _copy_row(self, src: int, dst: int) -> None:
        assert self.cache is not None and self.mask is not None
        end = self.length
        for k, v in zip(self.cache.k, self.cache.v, strict=True):
            k[dst, :, :end] = k[src, :, :end]
            v[dst, :, :end] = v[src, :, :end]
        self.mask[dst, :end] = self.mask[src, :end]

    def _move_columns(self, rows: list[Sequence], drop: int, pad: int) -> None:
        """In every row, drop the first `drop` columns or insert `pad` masked ones."""
        assert self.cache is not None and self.mask is not None
        n, end = len(rows), self.length
        src, dst = slice(drop, end), slice(pad, end - drop + pad)
        for t in [*self.cache.k, *self.cache.v]:
            t[:n, :, dst] = t[:n, :, src].clone()
        self.mask[:n, dst] = self.mask[:n, src].clone()
        self.mask[:n, :pad] = False
        self.length = end - drop + pad
        for s in rows:
            s.start += pad - drop


def _stopped(decode: Callable[[list[int]], str], new: list[int], stop: list[str]) -> bool:
    # a stop string completed by the last token lies within the last few tokens
    window = max(len(s) for s in stop) + 8
    text = decode(new[-window:])
    return any(s in text for s in stop)


def _run_job(fn: Callable[[], Any], future: Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as e:
        future.set_exception(e)
