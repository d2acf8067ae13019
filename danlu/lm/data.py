"""Text for language modeling: read, tokenize (character-level, byte-level BPE trained on
the training split, or a given tokenizer.json), split, and pack into blocks.

Every tokenizer is a Hugging Face `tokenizers.Tokenizer`, saved as tokenizer.json in the
run folder, so `danlu generate` and transformers read it back the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from danlu.config import DataConfig
from danlu.data.sequences import tokenizer_file
from danlu.data.tabular import TensorData
from danlu.errors import DanluError
from danlu.lm.instructions import Conversation, conversation, encode_chat, encode_pair, layout
from danlu.lm.tokenizer import EOT, TextTokenizer


@dataclass
class LMSchema:
    vocab_size: int
    block_size: int
    eos_token_id: int | None
    tokenizer: str  # char | bpe | file
    task: str = "language_modeling"
    input_kind: str = "text"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_documents(cfg: DataConfig) -> list[Any]:
    """Texts to train on; or (prompt, completion) pairs when JSONL rows hold
    data.prompt_field and data.completion_field instead of data.text_field; or chat
    conversations (`messages`, danlu/lm/instructions.py)."""
    path = Path(cfg.path or cfg.train or "")
    if not path.exists():
        raise DanluError(f"{path}: text file or folder not found")
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".md", ".jsonl"))
        if path.is_dir()
        else [path]
    )
    if not files:
        raise DanluError(f"{path}: no .txt files in the folder")
    docs: list[Any] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DanluError(f"{f}: cannot read as UTF-8 text: {e}") from None
        if f.suffix == ".jsonl" or (path.is_file() and path.suffix in (".jsonl", ".ndjson")):
            docs.extend(_jsonl_rows(f, text, cfg))
        else:
            docs.append(text)
    kinds = {type(d) for d in docs}
    if len(kinds) > 1:
        raise DanluError(
            f"{path}: mixes plain text, prompt/completion and chat (messages) rows; use one kind per run"
        )
    docs = [d for d in docs if isinstance(d, Conversation) or (d[1] if isinstance(d, tuple) else d).strip()]
    if not docs:
        raise DanluError(f"{path}: the text is empty; a language model needs text to train on")
    return docs


def _jsonl_rows(f: Path, text: str, cfg: DataConfig) -> list[Any]:
    out: list[Any] = []
    field, prompt, completion = cfg.text_field, cfg.prompt_field, cfg.completion_field
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DanluError(f"{f}: line {n} is not JSON: {e.msg}") from None
        if isinstance(row, dict) and "messages" in row:
            out.append(conversation(row, f"{f}: line {n}"))
        elif isinstance(row, dict) and isinstance(row.get(field), str):
            out.append(row[field])
        elif isinstance(row, dict) and all(isinstance(row.get(k), str) for k in (prompt, completion)):
            out.append((row[prompt], row[completion]))
        else:
            raise DanluError(
                f"{f}: line {n} has neither a text field '{field}' nor prompt/completion fields"
                f" '{prompt}'/'{completion}' nor chat 'messages' (set data.text_field or"
                " data.prompt_field/completion_field)"
            )
    return out


def fit_tokenizer(cfg: DataConfig, train_docs: list[str]) -> TextTokenizer:
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise DanluError("language modeling needs the tokenizers package: pip install 'danlu[hf]'") from None
    if cfg.tokenizer == "char":
        chars = sorted(set("".join(train_docs)))
        if len(train_docs) > 1:
            chars.append(EOT)
        tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
        tok.add_special_tokens([EOT]) if len(train_docs) > 1 else None
        tok.decoder = decoders.Fuse()
        return TextTokenizer(tok, "char")
    if cfg.tokenizer == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(train_docs, trainer=trainer)
        return TextTokenizer(tok, "bpe")
    return TextTokenizer(tokenizer_file(cfg.tokenizer), "file")


def build(
    cfg: DataConfig, block_size: int, seed: int = 0, pretrained: Any = None
) -> tuple[LMSchema, TextTokenizer, dict[str, TensorData]]:
    """Documents joined by the end-of-text token, the last `split.val` of the tokens held
    out (like nanoGPT's 90/10), both packed into (block_size + 1)-token windows; or
    prompt/completion pairs, one padded row each, scored on completion tokens only.

    `pretrained` (danlu.lm.build.Pretrained): fine-tuning keeps the checkpoint's tokenizer."""
    docs = read_documents(cfg)
    if cfg.split.val <= 0:
        raise DanluError("data.split.val: language modeling needs a validation fraction > 0")
    hf = getattr(pretrained, "hf", None)  # causal_lm: the transformers tokenizer
    if isinstance(docs[0], Conversation) and not getattr(hf, "chat_template", None):
        raise DanluError(
            f"{cfg.path or cfg.train}: chat rows (messages) are rendered with the model's chat template;"
            " fine-tune a model.type causal_lm whose model.from has one, or use prompt/completion rows"
        )
    if cfg.packing and (hf is None or isinstance(docs[0], str)):
        raise DanluError(
            "data.packing packs prompt/completion or chat rows for model.type causal_lm"
            " (plain text is already cut into full windows)"
        )
    if not isinstance(docs[0], str):
        train_docs, val_docs = _split_pairs(docs, cfg.split.val, cfg.split.seed or seed)  # type: ignore[arg-type]
    else:
        train_docs, val_docs = _split_text(docs, cfg.split.val)  # type: ignore[arg-type]
    if pretrained is not None:
        if "tokenizer" in cfg.model_fields_set:
            raise DanluError(
                "data.tokenizer: fine-tuning uses the tokenizer of model.from; remove data.tokenizer"
            )
        tokenizer = TextTokenizer(pretrained.tokenizer, "pretrained", pretrained.eos_token_id, hf=hf)
        vocab = pretrained.vocab_size
        if tokenizer.vocab_size > vocab:
            raise DanluError(
                f"model.from: its tokenizer has {tokenizer.vocab_size} tokens but the model's embedding"
                f" has {vocab} rows; the checkpoint's tokenizer does not belong to it"
            )
    else:
        tokenizer = fit_tokenizer(cfg, [d[0] + d[1] if isinstance(d, tuple) else d for d in train_docs])  # type: ignore[index,operator]
        vocab = tokenizer.vocab_size
    splits = {}
    for name, part in (("train", train_docs), ("val", val_docs)):
        if not isinstance(part[0], str):
            examples = [encode_chat(hf, d, block_size) if isinstance(d, Conversation)
                        else encode_pair(tokenizer, d, block_size) for d in part]
            eos = tokenizer.eos_token_id
            splits[name] = layout(examples, block_size, eos if eos is not None else 0, cfg.packing)
            continue
        ids = _join(tokenizer, part)  # type: ignore[arg-type]
        n_blocks = (len(ids) - 1) // block_size
        if n_blocks < 1:
            raise DanluError(
                f"data.split.{name}: {len(ids)} tokens of {name} text is less than one block of"
                f" {block_size + 1}; use more text or a smaller model.block_size"
            )
        t = torch.tensor(ids, dtype=torch.long)
        # overlapping training windows (stride < block_size) are views of one tensor, so
        # sampling them is like nanoGPT's random offsets at no memory cost until batching;
        # validation always uses disjoint blocks so every token is scored once
        stride = (cfg.stride or block_size) if name == "train" else block_size
        windows = t.unfold(0, block_size + 1, stride)
        x, y = windows[:, :-1], windows[:, 1:]
        splits[name] = TensorData({"idx": x}, y)
    schema = LMSchema(vocab, block_size, tokenizer.eos_token_id, tokenizer.kind)
    return schema, tokenizer, splits


def _split_text(docs: list[str], val: float) -> tuple[list[str], list[str]]:
    # split by characters first so the tokenizer is fitted on training text only
    total = sum(len(d) for d in docs)
    cut = int(total * (1 - val))
    train_docs, val_docs, seen = [], [], 0
    for d in docs:
        if seen + len(d) <= cut:
            train_docs.append(d)
        elif seen >= cut:
            val_docs.append(d)
        else:
            train_docs.append(d[: cut - seen])
            val_docs.append(d[cut - seen :])
        seen += len(d)
    return train_docs, val_docs


def _split_pairs(pairs: list[Any], val: float, seed: int) -> tuple[list[Any], list[Any]]:
    n_val = int(round(len(pairs) * val))
    if n_val < 1 or n_val >= len(pairs):
        raise DanluError(
            f"data.split.val: {val} of {len(pairs)} prompt/completion pairs leaves"
            f" {'no validation pair' if n_val < 1 else 'nothing to train on'}; use more pairs"
        )
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


def _join(tokenizer: TextTokenizer, docs: list[str]) -> list[int]:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for i, d in enumerate(docs):
        if i and eos is not None:
            ids.append(eos)
        ids.extend(tokenizer.encode(d))
    return ids
