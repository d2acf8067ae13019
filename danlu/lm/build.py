"""Builds danlu's GPT from the `model:` section: from scratch (vocabulary from the
tokenizer), or from a checkpoint named by `model.from` to fine-tune, fully or with LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from danlu.config import GPT_ARCHITECTURE, GPTModelConfig
from danlu.errors import DanluError
from danlu.lm.model import GPT, GPTConfig
from danlu.lm.tokenizer import HFTokenizer


def gpt(cfg: Any, schema: Any, out_dim: int) -> GPT:
    """The `gpt` entry of the model registry: a fresh GPT with `out_dim` tokens."""
    return GPT(GPTConfig(vocab_size=out_dim, block_size=cfg.block_size, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias,
                         tie_embeddings=cfg.tie_embeddings, activation=cfg.activation))


@dataclass
class Pretrained:
    """A checkpoint ready to fine-tune: the model (LoRA-wrapped when asked), its tokenizer
    (a `tokenizers.Tokenizer`), EOS id, and the model config with its architecture written in."""

    model: nn.Module
    tokenizer: Any
    eos_token_id: int | None
    config: Any  # GPTModelConfig or CausalLMConfig
    vocab_size: int  # rows of the embedding (may exceed the tokenizer's, e.g. padded to 64)
    hf: Any = None  # the transformers tokenizer (its chat template), for causal_lm
    meta: dict[str, Any] = field(default_factory=dict)  # more keys for model.json's model section


def load_gpt(cfg: GPTModelConfig) -> Pretrained:
    """A GPT checkpoint (a danlu run or GPT-2 folder) to fine-tune as model.type gpt."""
    from danlu.lm.load import resolve_lm

    ref = cfg.from_ or ""
    lm = resolve_lm(ref, device="cpu", dtype="float32")
    if not isinstance(lm.model, GPT):
        raise DanluError(
            f"model.from: '{ref}' is a {type(lm.model).__name__} ({lm.kind}); model.type gpt fine-tunes"
            " a danlu language-model run or a GPT-2-family checkpoint"
        )
    model: GPT = lm.model
    have = model.config
    for name in GPT_ARCHITECTURE:
        if name in cfg.model_fields_set and getattr(cfg, name) != getattr(have, name):
            raise DanluError(
                f"model.{name}: {getattr(cfg, name)} contradicts the checkpoint '{ref}', which has"
                f" {name} {getattr(have, name)}; remove model.{name} (the checkpoint decides it)"
            )
    block = cfg.block_size if "block_size" in cfg.model_fields_set else have.block_size
    if block > have.block_size:
        raise DanluError(
            f"model.block_size: {block} is larger than the context of '{ref}'"
            f" ({have.block_size} positions); use at most {have.block_size}"
        )
    model.crop_block_size(block)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = cfg.dropout
    model.config.dropout = cfg.dropout
    resolved = cfg.model_copy(
        update={name: getattr(have, name) for name in GPT_ARCHITECTURE} | {"block_size": block}
    )
    if cfg.lora is not None:
        model = add_lora(model, cfg.lora)
    tok = lm.tokenizer.hf.backend_tokenizer if isinstance(lm.tokenizer, HFTokenizer) else lm.tokenizer.tok
    eos = lm.eos_token_id[0] if isinstance(lm.eos_token_id, list) else lm.eos_token_id
    return Pretrained(model, tok, eos, resolved, have.vocab_size)


def add_lora(model: nn.Module, cfg: Any, hint: str = "") -> nn.Module:
    """Freeze the model and train rank-r adapters on the named Linear layers (peft).
    `hint` ends the error for a name that is not there."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise DanluError("model.lora needs the peft package: pip install 'danlu[hf]'") from None
    linear = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    missing = [t for t in cfg.target_modules if t not in linear]
    if missing:
        raise DanluError(
            f"model.lora.target_modules: no Linear layer named '{missing[0]}' in the model;"
            f" its Linear layers are: {', '.join(linear)}{hint}"
        )
    config = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)
    )
    return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain model with adapters folded into its weights (W + BA * alpha / r)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
