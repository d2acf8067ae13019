"""Instruction data for fine-tuning a language model: prompt/completion pairs and chat
conversations (OpenAI's `{"messages": [{"role": ..., "content": ...}, ...]}`) become token
ids with labels, -100 where nothing is scored (prompts, system and user turns, padding), so
the loss is the completions' or the assistant turns' only. Then one example per row
(right-padded to the longest), or packed several to a window (`data.packing`): each keeps
its own positions and attends only to itself (`segment_ids`, danlu/lm/llama.py).

A conversation is rendered with the model's chat template (the tokenizer's Jinja template,
as `danlu chat` renders it, danlu/lm/chat.py). Which tokens are the assistant's: the
template renders messages[:i] plus the generation prompt as a prefix of messages[:i + 1];
what the assistant turn i adds after that prefix (its text and end-of-turn token) is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from danlu.data.tabular import TensorData
from danlu.errors import DanluError, one_line

Pair = tuple[str, str]  # (prompt, completion)
Example = tuple[list[int], list[int]]  # token ids, labels (-100: not scored)
ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    where: str  # "file: line n", for errors


def conversation(row: Any, where: str) -> Conversation:
    """A JSONL row's `messages`, checked: a list of {role, content} strings, one assistant turn at least."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DanluError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for m in messages:
        if not isinstance(m, dict) or not all(isinstance(m.get(k), str) for k in ("role", "content")):
            raise DanluError(f"{where}: every message needs string 'role' and 'content' fields, got {m!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DanluError(f"{where}: no assistant turn; a chat example is learned from its assistant turns")
    return Conversation([{"role": m["role"], "content": m["content"]} for m in messages], where)


def too_long(where: str, n: int, block: int) -> DanluError:
    return DanluError(
        f"{where}: the prompt is {n} tokens, longer than the context of {block} tokens (model.block_size);"
        " shorten it or raise model.block_size"
    )


def encode_pair(tokenizer: Any, pair: Pair, block: int) -> Example:
    """prompt + completion + EOS; the completion (and EOS) scored, cut to fit block + 1 tokens."""
    eos = tokenizer.eos_token_id
    p = tokenizer.encode(pair[0])
    c = tokenizer.encode(pair[1]) + ([eos] if eos is not None else [])
    if len(p) >= block:
        raise too_long(f"prompt {pair[0][:40]!r}", len(p), block)
    c = c[: block + 1 - max(len(p), 1)]
    return p + c, [-100] * len(p) + c


def encode_chat(hf: Any, conv: Conversation, block: int) -> Example:
    """The conversation through its last assistant turn, rendered with `hf`'s chat template;
    assistant turns scored."""
    def render(messages: list[dict[str, str]], prompt: bool) -> str:
        try:
            return str(hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt))
        except Exception as e:  # jinja2's TemplateError (raise_exception in the template), ...
            raise DanluError(f"{conv.where}: the chat template rejects the messages: {one_line(e)}") from None

    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, m in enumerate(conv.messages):
        if m["role"] != "assistant":
            continue
        before = render(conv.messages[:i], True)
        through = render(conv.messages[: i + 1], False)
        if not before.startswith(done) or not through.startswith(before):
            raise DanluError(
                f"{conv.where}: the chat template does not render the conversation's start as a prefix of"
                " the whole, so its assistant turns cannot be told apart; use prompt/completion rows"
            )
        context = hf.encode(before[len(done):], add_special_tokens=False)
        reply = hf.encode(through[len(before):], add_special_tokens=False)
        ids += context + reply
        labels += [-100] * len(context) + reply
        if not done and len(ids) - len(reply) >= block:
            raise too_long(conv.where, len(ids) - len(reply), block)
        done = through
    return ids[: block + 1], labels[: block + 1]


def layout(examples: list[Example], block: int, pad: int, packing: bool) -> TensorData:
    """Inputs and next-token targets: one example per row, right-padded to the longest; or
    packed in order into windows of `block` tokens, with segment ids (1, 2, ... per example,
    0 for padding) and positions restarting at each example."""
    pieces = [(ids[:-1], labels[1:]) for ids, labels in examples if len(ids) > 1]
    if not packing:
        width = max(len(x) for x, _ in pieces)
        x = torch.full((len(pieces), width), pad, dtype=torch.long)
        y = torch.full((len(pieces), width), -100, dtype=torch.long)
        for i, (xs, ys) in enumerate(pieces):
            x[i, : len(xs)] = torch.tensor(xs)
            y[i, : len(ys)] = torch.tensor(ys)
        return TensorData({"idx": x}, y)
    windows: list[list[tuple[list[int], list[int]]]] = [[]]
    used = 0
    for piece in pieces:
        if used + len(piece[0]) > block and windows[-1]:
            windows.append([])
            used = 0
        windows[-1].append(piece)
        used += len(piece[0])
    width = max(sum(len(p[0]) for p in w) for w in windows)
    x = torch.full((len(windows), width), pad, dtype=torch.long)
    y = torch.full((len(windows), width), -100, dtype=torch.long)
    pos = torch.zeros((len(windows), width), dtype=torch.long)
    seg = torch.zeros((len(windows), width), dtype=torch.long)
    for r, window in enumerate(windows):
        start = 0
        for s, (xs, ys) in enumerate(window, start=1):
            end = start + len(xs)
            x[r, start:end], y[r, start:end] = torch.tensor(xs), torch.tensor(ys)
            pos[r, start:end] = torch.arange(len(xs))
            seg[r, start:end] = s
            start = end
    return TensorData({"idx": x, "position_ids": pos, "segment_ids": seg}, y)
