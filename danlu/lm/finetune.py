"""Fine-tuning a Llama-family checkpoint (`model: {type: causal_lm, from: REF}`): the
checkpoint loads into danlu's Llama (danlu/lm/llama.py) through danlu/lm/load.py (a Hugging
Face folder, a GGUF file, a hub id or a causal_lm run), then trains in danlu's one trainer,
every weight or LoRA adapters (peft, danlu/lm/build.py `add_lora`: the mechanism GPT's
fine-tuning uses).

danlu's Llama names its Linear layers the same in every family: `qkv` (q_proj, k_proj and
v_proj fused), `o` (o_proj), `gate_up` (gate_proj and up_proj fused), `down` (down_proj),
`lm_head`. LoRA on `qkv` is LoRA on q, k and v sharing one A matrix; danlu/lm/llama_export.py
writes it as a peft adapter of transformers' names.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from danlu.config import CausalLMConfig
from danlu.errors import DanluError
from danlu.lm.build import Pretrained, add_lora, load_gpt
from danlu.lm.llama import Attention, Llama

DEFAULT_BLOCK = 2048  # the longest training window unless model.block_size says otherwise
LORA_HINT = (
    " (danlu's Llama fuses q_proj, k_proj, v_proj into qkv and gate_proj, up_proj into gate_up;"
    " o is o_proj, down is down_proj)"
)


def causal_lm(cfg: Any, schema: Any, out_dim: int) -> Llama:
    """The registry's `causal_lm` builder: there is no from-scratch Llama to build."""
    raise DanluError("model.type causal_lm fine-tunes a checkpoint: set model.from")


def load_pretrained(cfg: Any) -> Pretrained:
    """The checkpoint `model.from` names, ready to fine-tune: a GPT (model.type gpt,
    danlu/lm/build.py) or a Llama-family model (causal_lm)."""
    return load_causal_lm(cfg) if cfg.type == "causal_lm" else load_gpt(cfg)


def load_causal_lm(cfg: CausalLMConfig) -> Pretrained:
    from danlu.lm.llama_hf import FAMILIES
    from danlu.lm.load import resolve_lm

    ref = cfg.from_
    lm = resolve_lm(ref, device="cpu", dtype="float32", engine="danlu")
    if not isinstance(lm.model, Llama):
        raise DanluError(
            f"model.from: '{ref}' is a {type(lm.model).__name__} ({lm.kind}); model.type causal_lm"
            f" fine-tunes model_type {', '.join(FAMILIES)} (model.type gpt fine-tunes GPT-2)"
        )
    model: Llama = lm.model
    context = model.config.block_size
    block = cfg.block_size or min(context, DEFAULT_BLOCK)
    if block > context:
        raise DanluError(
            f"model.block_size: {block} is larger than the context of '{ref}' ({context} positions);"
            f" use at most {context}"
        )
    model.config.dropout = cfg.dropout
    for m in model.modules():
        if isinstance(m, Attention):
            m.dropout = cfg.dropout
    model.gradient_checkpointing = cfg.gradient_checkpointing
    model.requires_grad_(True)
    trained: Any = add_lora(model, cfg.lora, LORA_HINT) if cfg.lora is not None else model
    hf = getattr(lm.tokenizer, "hf", None)
    if hf is None:
        raise DanluError(f"model.from: '{ref}' has no transformers tokenizer; causal_lm needs one")
    eos = lm.eos_token_id[0] if isinstance(lm.eos_token_id, list) else lm.eos_token_id
    resolved = cfg.model_copy(update={"block_size": block})
    meta = {"llama": asdict(model.config)}  # what load.py rebuilds the run's model from
    return Pretrained(trained, hf.backend_tokenizer, eos, resolved, model.config.vocab_size, hf=hf, meta=meta)
