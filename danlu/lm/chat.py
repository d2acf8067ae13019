"""Chat with a language model: messages -> the model's chat template -> a streamed reply.

The template is the tokenizer's own (a Jinja template in tokenizer_config.json or the GGUF
file, rendered by transformers' `apply_chat_template`), or with template="plain" a plain
"User: ... / Assistant: ..." transcript for models that have none. `danlu chat` (the
interactive terminal chat in cli.py) and `danlu generate --chat` go through `Chat`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from danlu.errors import DanluError, one_line
from danlu.lm.complete import fit_prompt, stream_ids
from danlu.lm.load import LoadedLM
from danlu.lm.options import GenerationOptions

TEMPLATES = ("model", "plain")
PLAIN_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
PLAIN_STOP = "\nUser:"  # a model chatting in the plain format must not write the user's next turn


def has_template(lm: LoadedLM) -> bool:
    return bool(getattr(getattr(lm.tokenizer, "hf", None), "chat_template", None))


def render_text(
    lm: LoadedLM, messages: list[dict[str, str]], template: str = "model"
) -> tuple[str, list[str]]:
    """(prompt text, extra stop strings) of `messages` followed by the start of the assistant's
    turn: the tokenizer's chat template (its text holds the special tokens, BOS included), or
    the plain format, one `Role: text` line per message then `Assistant:`, which also stops
    at a new `\nUser:` line. `danlu chat`, `generate --chat` and the server's
    /v1/chat/completions all render here."""
    if template not in TEMPLATES:
        raise DanluError(f"unknown chat template '{template}'; valid: {', '.join(TEMPLATES)}")
    if template == "plain":
        lines = [f"{PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:", [PLAIN_STOP]
    if not has_template(lm):
        raise DanluError(
            f"'{lm.source}' has no chat template (tokenizer_config.json chat_template); "
            "--template plain chats in a plain 'User: ... / Assistant: ...' format instead"
        )
    hf = lm.tokenizer.hf  # type: ignore[attr-defined]
    try:
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2's TemplateError: e.g. a role the template rejects
        raise DanluError(f"the chat template of '{lm.source}' rejects the messages: {one_line(e)}") from None
    return str(text), []


def render(lm: LoadedLM, messages: list[dict[str, str]], template: str = "model") -> list[int]:
    """Token ids of render_text's prompt."""
    text, _ = render_text(lm, messages, template)
    if template == "plain":
        return lm.tokenizer.encode(text)
    # the template writes the special tokens (BOS included) itself
    return list(lm.tokenizer.hf.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]


@dataclass
class Chat:
    """A conversation: history, system prompt, and the reply to each new user message."""

    lm: LoadedLM
    opts: GenerationOptions
    template: str = "model"
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    last_tokens: int = 0  # tokens of the last reply, and how long it took
    last_seconds: float = 0.0

    def __post_init__(self) -> None:
        render(self.lm, [{"role": "user", "content": "hi"}], self.template)  # no template: fail now
        if self.template == "plain" and PLAIN_STOP not in self.opts.stop:
            self.opts.stop = [*self.opts.stop, PLAIN_STOP]

    def messages(self, user: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": user}]

    def reply(self, user: str) -> Iterator[str]:
        """The assistant's answer to `user` as text pieces; history keeps both once it ends.
        The oldest turns are dropped when the conversation outgrows the context."""
        while True:
            ids = render(self.lm, self.messages(user), self.template)
            block = self.lm.block_size
            if block is None or len(ids) + self.opts.max_new_tokens <= block or not self.history:
                break
            self.history = self.history[2:]  # one user/assistant exchange
        ids = fit_prompt(self.lm, ids, self.opts)
        start, pieces = time.perf_counter(), []
        for piece in stream_ids(self.lm, ids, self.opts):
            pieces.append(piece)
            yield piece
        text = "".join(pieces)
        self.last_seconds = time.perf_counter() - start
        # the reply's tokens again (for the tokens/s line): BPE text round-trips to its tokens
        self.last_tokens = len(self.lm.tokenizer.encode(text)) if text else 0
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]

    def reset(self) -> None:
        self.history = []
