"""Hugging Face Llama-family checkpoints -> danlu's Llama (danlu/lm/llama.py).

`config_from_hf` maps a config.json (transformers 4's `rope_theta`/`rope_scaling` or 5's
`rope_parameters`) onto `LlamaConfig`, and raises a DanluError for anything danlu's engine
does not implement (transformers then runs the model: danlu/lm/load.py). `from_hf` reads a
folder's weights, `from_transformers` takes a loaded transformers model (what a GGUF file
becomes once transformers has dequantised it). The weights are renamed and the separate
q/k/v and gate/up matrices concatenated into danlu's fused ones (Phi-3 stores them fused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from danlu.errors import DanluError
from danlu.lm.hf import read_hf_weights
from danlu.lm.llama import ROPE_TYPES, Llama, LlamaConfig, rope_frequencies

FAMILIES = ("llama", "qwen2", "mistral", "phi3", "gemma")
# transformers' config defaults where they differ by family (a config.json written by
# save_pretrained has every key; hand-written ones may not)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "mistral": {"max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "phi3": {"max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    "gemma": {"max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
}
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")


def unsupported(what: str) -> DanluError:
    return DanluError(
        f"{what}; danlu's engine runs model_type {', '.join(FAMILIES)} (and gpt2); "
        "engine 'transformers' (--engine transformers) runs it anyway"
    )


def config_from_hf(hf: dict[str, Any], where: str) -> LlamaConfig:
    """LlamaConfig for a Llama-family config.json (`where` names it in errors)."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise unsupported(f"'{where}' has model_type {family!r}")
    get = {**_DEFAULTS[family], **{k: v for k, v in hf.items() if v is not None}}.get
    n_embd, n_head = get("hidden_size"), get("num_attention_heads")
    if not isinstance(n_embd, int) or not isinstance(n_head, int) or n_head < 1:
        raise DanluError(f"'{where}' lacks hidden_size or num_attention_heads")

    act = get("hidden_act", "silu")
    if family == "gemma" and act == "gelu":
        act = "gelu_pytorch_tanh"  # transformers reads Gemma's legacy "gelu" as the tanh form
    if act not in ("silu", "gelu", *_GELU_TANH):
        raise unsupported(f"'{where}' has hidden_act {act!r}")

    rope = dict(get("rope_parameters") or get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise unsupported(f"'{where}' has rope scaling {rope_type!r} (danlu's: {', '.join(ROPE_TYPES)})")
    theta = rope.get("rope_theta", get("rope_theta", 10000.0))

    window = None
    if family in ("mistral", "phi3"):
        window = get("sliding_window")
    elif family == "qwen2" and get("use_sliding_window", False) and get("sliding_window"):  # noqa: SIM102
        # Qwen2 slides the window only on layers from max_window_layers on
        if get("max_window_layers", 28) < get("num_hidden_layers"):
            raise unsupported(f"'{where}' uses a sliding window on some layers only (use_sliding_window)")

    attention_bias = bool(get("attention_bias", False))
    return LlamaConfig(
        family=family,
        vocab_size=get("vocab_size", 32000),
        block_size=get("max_position_embeddings"),
        n_layer=get("num_hidden_layers"),
        n_head=n_head,
        n_kv_head=get("num_key_value_heads", n_head),
        n_embd=n_embd,
        head_dim=get("head_dim", n_embd // n_head),
        intermediate_size=get("intermediate_size"),
        norm_eps=float(get("rms_norm_eps")),
        norm_plus_one=family == "gemma",
        activation="silu" if act == "silu" else "gelu" if act == "gelu" else "gelu_tanh",
        embed_scale=family == "gemma",
        qkv_bias=family == "qwen2" or attention_bias,
        o_bias=family in ("llama", "gemma") and attention_bias,
        mlp_bias=family == "llama" and bool(get("mlp_bias", False)),
        tie_embeddings=bool(get("tie_word_embeddings")),
        rope_theta=float(theta),
        rope_type=rope_type,
        rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_positions=int(rope.get("original_max_position_embeddings", 8192)),
        partial_rotary_factor=float(rope.get("partial_rotary_factor", get("partial_rotary_factor", 1.0))),
        sliding_window=window,
    )


def convert_state(hf: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """transformers' parameter names -> danlu's, q/k/v and gate/up concatenated. A head
    that differs from the embeddings unties `cfg.tie_embeddings`."""
    hf = {k.removeprefix("model."): v for k, v in hf.items() if not k.endswith("rotary_emb.inv_freq")}
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise DanluError(f"the checkpoint lacks the weight '{name}' of a {cfg.family} model")
        return hf.pop(name)

    out["embed.weight"] = take("embed_tokens.weight")
    out["norm.weight"] = take("norm.weight")
    if "lm_head.weight" in hf:
        head = take("lm_head.weight")
        embed = out["embed.weight"]
        if cfg.tie_embeddings and head is not embed and not torch.equal(head, embed):
            cfg.tie_embeddings = False  # the config says tied, the weights say otherwise: trust them
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = head
    elif not cfg.tie_embeddings:
        raise DanluError("the checkpoint lacks lm_head.weight and its config does not tie embeddings")
    for i in range(cfg.n_layer):
        src, dst = f"layers.{i}.", f"layers.{i}."
        out[dst + "attn_norm.weight"] = take(src + "input_layernorm.weight")
        out[dst + "mlp_norm.weight"] = take(src + "post_attention_layernorm.weight")
        if src + "self_attn.qkv_proj.weight" in hf:  # Phi-3
            out[dst + "attn.qkv.weight"] = take(src + "self_attn.qkv_proj.weight")
        else:
            qkv = [take(f"{src}self_attn.{p}_proj.weight") for p in "qkv"]
            out[dst + "attn.qkv.weight"] = torch.cat(qkv, dim=0)
        if cfg.qkv_bias:
            out[dst + "attn.qkv.bias"] = torch.cat([take(f"{src}self_attn.{p}_proj.bias") for p in "qkv"])
        out[dst + "attn.o.weight"] = take(src + "self_attn.o_proj.weight")
        if cfg.o_bias:
            out[dst + "attn.o.bias"] = take(src + "self_attn.o_proj.bias")
        if src + "mlp.gate_up_proj.weight" in hf:  # Phi-3: gate rows first, then up
            out[dst + "mlp.gate_up.weight"] = take(src + "mlp.gate_up_proj.weight")
        else:
            gate_up = [take(src + "mlp.gate_proj.weight"), take(src + "mlp.up_proj.weight")]
            out[dst + "mlp.gate_up.weight"] = torch.cat(gate_up, dim=0)
        out[dst + "mlp.down.weight"] = take(src + "mlp.down_proj.weight")
        if cfg.mlp_bias:
            bias = [take(src + "mlp.gate_proj.bias"), take(src + "mlp.up_proj.bias")]
            out[dst + "mlp.gate_up.bias"] = torch.cat(bias)
            out[dst + "mlp.down.bias"] = take(src + "mlp.down_proj.bias")
    if hf:
        raise DanluError(
            f"the checkpoint has weights a {cfg.family} model does not use: {', '.join(sorted(hf)[:3])}"
        )
    return out


def build(cfg: LlamaConfig, hf_state: dict[str, torch.Tensor]) -> Llama:
    """danlu's Llama holding `hf_state`'s weights in float32 (danlu.lm.cpu.cast or
    LoadedLM's dtype make bfloat16 copies)."""
    state = {k: v.float() for k, v in convert_state(hf_state, cfg).items()}
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    with torch.device("meta"):  # no random initialisation of weights about to be replaced
        model = Llama(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise DanluError(f"the {cfg.family} checkpoint does not fit its config.json: {e}") from None
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.inv_freq = rope_frequencies(cfg)  # the one made under the meta device holds no values
    return model.eval()


def from_hf(path: Path, hf_config: dict[str, Any] | None = None) -> Llama:
    """A Hugging Face Llama-family folder (config.json + safetensors or pytorch_model.bin)."""
    config_file = path / "config.json"
    if hf_config is None:
        try:
            hf_config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DanluError(f"cannot read '{config_file}': {e}") from None
    cfg = config_from_hf(hf_config, str(config_file))
    return build(cfg, read_hf_weights(path))


def from_transformers(hf_model: Any, where: str) -> Llama:
    """danlu's Llama with the weights of a loaded transformers Llama-family model."""
    cfg = config_from_hf(hf_model.config.to_dict(), where)
    return build(cfg, dict(hf_model.state_dict()))
