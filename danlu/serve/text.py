"""POST /v1/completions and /v1/chat/completions: OpenAI's shapes over danlu/lm/complete.py.

Decoding runs on the model's one worker thread (models.Served.worker); the event loop only
moves text. For danlu's own GPT that thread runs a continuous-batching loop
(danlu/lm/continuous.py): each request with one sequence (streamed or not, n=1, no logprobs,
prompt and max_tokens within the context) joins the running batch at its next step and leaves
it when it ends, so streams interleave; everything else (n > 1, logprobs, text outgrowing the
context) runs whole between two steps of that loop. Transformers' causal LMs decode one request
after another, in the order they came (their generate has no batch to join). When a client goes
away its sequence stops at its next token and frees its row.

Sampling follows OpenAI's defaults: temperature 1 (0 is greedy), top_p 1 (no filter),
max_tokens 16 for completions and up to 256 (within the context) for chat. Chat uses the
tokenizer's chat template when it has one, else the plain format (both rendered by
lm/chat.py's `render_text`, as `danlu chat` renders them).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from danlu.serve.errors import APIError, body
from danlu.serve.models import Served
from danlu.serve.protocol import ChatRequest, CompletionRequest, Message, Sampling

CHAT_MAX_TOKENS = 256  # chat's default max_tokens (OpenAI: until the context is full)
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for completions
def chat_prompt(lm: Any, messages: list[Message]) -> tuple[str, list[str]]:
    """(prompt text, extra stop strings) for a chat, rendered as `danlu chat` renders it
    (lm/chat.py): the tokenizer's template, else the plain format (a server has no
    --template option: a model without a template chats in the plain one)."""
    from danlu.errors import DanluError
    from danlu.lm.chat import has_template, render_text

    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
    try:
        text, stops = render_text(lm, turns, "model" if has_template(lm) else "plain")
    except DanluError as e:  # a template that rejects this conversation
        raise APIError(400, str(e), param="messages") from None
    hf = getattr(lm.tokenizer, "hf", None)
    bos = getattr(hf, "bos_token", None)
    if not stops and bos and text.startswith(bos) and lm.tokenizer.encode("a")[:1] == [hf.bos_token_id]:
        text = text[len(bos) :]  # encoding adds it again
    return text, stops


def _options(lm: Any, req: Sampling, max_tokens: int, stops: list[str], stream: bool) -> Any:
    from danlu.lm.options import make_options

    greedy = req.temperature == 0
    return make_options(
        lm,
        max_new_tokens=max_tokens,
        temperature=None if greedy else req.temperature,
        top_p=None if greedy or req.top_p >= 1 else req.top_p,
        num_return_sequences=1 if greedy or stream else req.n,
        stop=list(req.stop or []) + stops,  # type: ignore[operator]
        seed=req.seed,
    )


def _check(served: Served, req: Sampling) -> None:
    field = req.unsupported()
    if field is not None:
        raise APIError(400, f"'{field}' is not supported by danlu's server; leave it unset", param=field)
    if req.stream and req.n > 1:
        raise APIError(400, "'n' must be 1 with stream: true (one stream per request)", param="n")
    block = served.model.block_size
    if block is not None and req.max_tokens is not None and req.max_tokens > block:
        message = f"'max_tokens' {req.max_tokens} exceeds the model's context of {block} tokens"
        raise APIError(400, message, param="max_tokens")


def _encode(served: Served, prompts: list[str], opts: Any, param: str) -> list[list[int]]:
    """Token ids of the prompts, checked against the context before any decoding."""
    from danlu.errors import DanluError
    from danlu.lm.complete import encode_prompts

    lm = served.model
    limit = 64 * (lm.block_size or 16384)  # characters: far past any context, refused untokenized
    for p in prompts:
        if not p:
            raise APIError(400, f"'{param}' is empty; give at least one token of text", param=param)
        if len(p) > limit:
            message = f"'{param}' has {len(p)} characters, far more than the model's context"
            raise APIError(400, message, param=param)
    try:
        return encode_prompts(lm, prompts, opts)
    except DanluError as e:
        raise APIError(400, str(e), param=param) from None


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _finish(reason: str) -> str:
    return "stop" if reason in ("eos", "stop") else "length"


# ---------------------------------------------------------------------------- whole answers


def _decoder(served: Served) -> Any:
    """The model's continuous-batching loop (danlu's own GPT), made on first use; None for
    transformers' models."""
    if served.decoder is None and served.model.is_danlu:
        from danlu.lm.continuous import ContinuousDecoder

        lm = served.model
        served.decoder = ContinuousDecoder(lm.model, lm.tokenizer.decode, served.worker, served.max_rows,
                                           served.on_step)
    return served.decoder


def _batchable(served: Served, ids: list[int], opts: Any) -> bool:
    from danlu.lm.continuous import batchable

    return _decoder(served) is not None and batchable(served.model.model, len(ids), opts)


async def _on_worker(served: Served, fn: Callable[[], Any]) -> Any:
    """fn() on the model's worker thread: between two steps of its decoding loop, if it has one."""
    decoder = _decoder(served)
    if decoder is not None:
        return await asyncio.wrap_future(decoder.call(fn))
    return await asyncio.get_running_loop().run_in_executor(served.worker, fn)


async def _decode(served: Served, prompt: str, ids: list[int], opts: Any) -> Any:
    """One sequence through the decoding loop: its Completion."""
    from danlu.lm.complete import completion_of
    from danlu.lm.continuous import Sequence

    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if ended.done():
            return
        if error is not None:
            ended.set_exception(error)
        else:
            ended.set_result(None)

    seq = Sequence(ids, opts, lambda _tok: None, lambda _r, e: loop.call_soon_threadsafe(settle, e))
    _decoder(served).submit(seq)
    try:
        await ended
    finally:
        seq.cancelled.set()  # a request whose client left frees its row
    return completion_of(served.model, prompt, seq.new, opts)


async def _complete(
    served: Served, prompts: list[str], ids: list[list[int]], opts: Any, n: int, logprobs: bool
) -> list[Any]:
    """Completions of every prompt, n per prompt (greedy: one decoded, repeated)."""
    from danlu.lm.complete import complete

    one_each = opts.num_return_sequences == 1 and not logprobs
    if one_each and all(_batchable(served, i, opts) for i in ids):
        results = list(await asyncio.gather(*(_decode(served, p, i, opts) for p, i in zip(prompts, ids,
                                                                                          strict=True))))
        for k, c in enumerate(results):
            c.prompt_index = k
    else:
        results = await _on_worker(served, lambda: complete(served.model, prompts, opts, logprobs=logprobs))
    if opts.num_return_sequences == n:
        return results
    return [c for c in results for _ in range(n)]


def _logprobs(served: Served, c: Any) -> dict[str, Any]:
    decode = served.model.tokenizer.decode
    tokens = [decode([t]) for t in c.token_ids]
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": c.logprobs,
        "top_logprobs": [{t: lp} for t, lp in zip(tokens, c.logprobs or [], strict=False)],
        "text_offset": offsets,
    }


async def completions(served: Served, req: CompletionRequest, count: Callable[[str, int], None]) -> Any:
    _check(served, req)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise APIError(400, "'prompt' is an empty list", param="prompt")
    if req.stream and len(prompts) > 1:
        raise APIError(400, "stream: true takes one prompt", param="prompt")
    if req.stream and req.logprobs is not None:
        raise APIError(400, "'logprobs' is not supported with stream: true", param="logprobs")
    max_tokens = req.max_tokens or COMPLETION_MAX_TOKENS
    opts = _options(served.model, req, max_tokens, [], req.stream)
    ids = _encode(served, prompts, opts, "prompt")
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        return _stream(served, req, prompts[0], ids[0], opts, rid, created, "text_completion", count)
    results = await _complete(served, prompts, ids, opts, req.n, req.logprobs is not None)
    new = sum(len(c.token_ids) for c in results)
    count(served.name, new)
    choices = [
        {
            "index": i,
            "text": c.text,
            "logprobs": _logprobs(served, c) if req.logprobs is not None else None,
            "finish_reason": _finish(c.finish_reason),
        }
        for i, c in enumerate(results)
    ]
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": served.name,
        "choices": choices,
        "usage": _usage(sum(len(p) for p in ids), new),
    }


async def chat(served: Served, req: ChatRequest, count: Callable[[str, int], None]) -> Any:
    _check(served, req)
    if req.max_completion_tokens is not None and req.max_tokens is None:
        req.max_tokens = req.max_completion_tokens
        _check(served, req)
    prompt, stops = chat_prompt(served.model, req.messages)
    block = served.model.block_size
    opts = _options(served.model, req, req.max_tokens or 1, stops, req.stream)
    (ids,) = _encode(served, [prompt], opts, "messages")  # checked against the context here
    if req.max_tokens is None:  # as much as fits, up to CHAT_MAX_TOKENS: fits by construction
        room = CHAT_MAX_TOKENS if block is None else block - (0 if served.model.is_danlu else len(ids))
        opts = _options(served.model, req, max(1, min(CHAT_MAX_TOKENS, room)), stops, req.stream)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        return _stream(served, req, prompt, ids, opts, rid, created, "chat.completion.chunk", count)
    results = await _complete(served, [prompt], [ids], opts, req.n, False)
    new = sum(len(c.token_ids) for c in results)
    count(served.name, new)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": None,
            "finish_reason": _finish(c.finish_reason),
        }
        for i, c in enumerate(results)
    ]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": served.name,
        "choices": choices,
        "usage": _usage(len(ids), new),
    }


# ---------------------------------------------------------------------------- streams


class _Gone(Exception):
    """Raised from on_token when the client went away: ends that decoding."""


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _stream(
    served: Served,
    req: Sampling,
    prompt: str,
    ids: list[int],
    opts: Any,
    rid: str,
    created: int,
    obj: str,
    count: Callable[[str, int], None],
) -> StreamingResponse:
    """Server-sent events: one chunk per piece of text, every chunk with the same id; chat's
    first delta carries the role; the last chunk has the finish_reason; then the usage chunk
    (stream_options.include_usage) and `data: [DONE]`."""
    from danlu.lm.complete import Pieces, stream_text
    from danlu.lm.continuous import Sequence

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    gone = threading.Event()
    tokens: list[int] = []
    lm = served.model
    prompt_tokens = len(ids)

    def put(item: tuple[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def on_token(tok: int) -> None:
        if gone.is_set():
            raise _Gone
        tokens.append(tok)

    # in the decoding loop: tokens become text pieces on the worker thread, as they come
    pieces = Pieces(lm, opts)

    def on_batched_token(tok: int) -> None:
        on_token(tok)
        piece = pieces.push(tok)
        if piece:
            put(("text", piece))

    def on_end(reason: str, error: BaseException | None) -> None:
        if error is not None:
            put(("error", error))
            return
        piece = pieces.close()
        if piece:
            put(("text", piece))
        put(("end", None))

    # anything else: the whole generation as one job on the worker
    def work() -> None:
        try:
            if gone.is_set():
                return
            for piece in stream_text(lm, prompt, opts, on_token=on_token):
                put(("text", piece))
            put(("end", None))
        except _Gone:
            pass
        except Exception as e:  # reported in the stream: the headers have gone out
            put(("error", e))

    def begin() -> Any:
        if _batchable(served, ids, opts):
            _decoder(served).submit(Sequence(ids, opts, on_batched_token, on_end, cancelled=gone))
            return None
        decoder = _decoder(served)
        if decoder is not None:
            return decoder.call(work)
        return loop.run_in_executor(served.worker, work)

    chat = obj == "chat.completion.chunk"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": obj, "created": created, "model": served.name, "choices": [choice]}

    def finish_reason() -> str:
        eos = set(opts.eos_ids)
        if tokens and tokens[-1] in eos:
            return "stop"
        text = lm.tokenizer.decode(tokens)
        if any(s in text for s in opts.stop):
            return "stop"
        return "length" if len(tokens) >= opts.max_new_tokens else "stop"

    async def events() -> AsyncIterator[str]:
        job = begin()
        try:
            if chat:
                yield _sse(chunk(None, None, first=True))
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield _sse(chunk(value, None))
                    continue
                if kind == "error":
                    from danlu.errors import DanluError

                    status = 400 if isinstance(value, DanluError) else 500
                    message = str(value) if status == 400 else "internal server error during generation"
                    yield _sse(body(status, message))
                    break
                count(served.name, len(tokens))
                yield _sse(chunk(None, finish_reason()))
                if req.stream_options is not None and req.stream_options.include_usage:
                    usage = _usage(prompt_tokens, len(tokens))
                    yield _sse({"id": rid, "object": obj, "created": created, "model": served.name,
                                "choices": [], "usage": usage})
                break
            yield "data: [DONE]\n\n"
        finally:
            gone.set()  # a client that left mid-stream: its decoding stops at the next token
            if job is not None:
                job.cancel()  # and one still waiting for the worker never starts

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
