"""Text <-> token ids for language models: one interface (`Tokenizer`) over the two
libraries that hold tokenizers. danlu's own runs use `tokenizers` (a tokenizer.json in the
run folder, `TextTokenizer`); Hugging Face model folders use transformers' AutoTokenizer,
which also covers sentencepiece-only and custom tokenizers (`HFTokenizer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from danlu.errors import DanluError

EOT = "<|endoftext|>"


class Tokenizer(Protocol):
    eos_token_id: int | None
    pad_token_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class TextTokenizer:
    """A `tokenizers.Tokenizer`: the one a language-modeling run fits on its training text
    (its state is the tokenizer.json file it writes) or reads back from its run folder."""

    def __init__(
        self,
        tok: Any,
        kind: str,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        hf: Any = None,
    ) -> None:
        self.tok, self.kind = tok, kind
        self.hf = hf  # fine-tuning a causal_lm: the transformers tokenizer it came from (chat template)
        self._char_ids = tok.get_vocab() if kind == "char" else None
        self._eos = eos_token_id
        self.pad_token_id = pad_token_id

    @classmethod
    def from_file(
        cls, file: Path, eos_token_id: int | None = None, pad_token_id: int | None = None
    ) -> TextTokenizer:
        """A run's tokenizer.json, as `danlu generate` and export read it back."""
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises its own Exception type
            raise DanluError(f"cannot read '{file}': {e}") from None
        return cls(tok, "file", eos_token_id, pad_token_id)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def eos_token_id(self) -> int | None:
        return self._eos if self._eos is not None else self.tok.token_to_id(EOT)

    def encode(self, text: str) -> list[int]:
        if self._char_ids is not None:  # a dict lookup per character beats the BPE machinery
            ids, unk = self._char_ids, None
            try:
                return [ids[c] for c in text]
            except KeyError as e:
                unk = e.args[0]
            raise DanluError(
                f"character {unk!r} is not in the character vocabulary fitted on the training text"
            )
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def save(self, path: Path) -> None:
        """tokenizer.json at `path`; with `hf`, transformers' files beside it (tokenizer_config.json
        with the chat template, ...), which AutoTokenizer reads back."""
        from danlu import fileio

        if self.hf is not None:
            self.hf.save_pretrained(str(path.parent))
            return
        fileio.write_text(path, self.tok.to_str())

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": "tokenizer.json"}


class HFTokenizer:
    """A transformers tokenizer (`hf`, which transformers' generate also takes for stop strings)."""

    def __init__(self, tok: Any, eos_token_id: int | None = None, pad_token_id: int | None = None) -> None:
        self.hf = tok
        self.eos_token_id = eos_token_id if eos_token_id is not None else tok.eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else tok.pad_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text))

    def decode(self, ids: list[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=True))
