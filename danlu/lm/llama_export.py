"""danlu's Llama -> a Hugging Face folder, the inverse of danlu/lm/llama_hf.py: `config_to_hf`
writes the family's config.json, `state_to_hf` splits the fused q/k/v and gate/up matrices
back into transformers' names (Phi-3 keeps them fused, as it stores them), and
`export_llama_run` writes a causal_lm run (danlu/lm/finetune.py; LoRA already merged into
its weights) as a folder AutoModelForCausalLM and AutoTokenizer load: config.json,
model.safetensors, generation_config.json and the run's tokenizer files with the chat
template. `adapter_only` writes the run's LoRA adapters instead, as a peft adapter folder of
transformers' module names (LoRA on danlu's fused qkv becomes q_proj, k_proj, v_proj adapters
sharing one A matrix: the same update), which PeftModel.from_pretrained puts on the base.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from danlu import fileio
from danlu.errors import DanluError
from danlu.lm.llama import LlamaConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
                 "phi3": "Phi3ForCausalLM", "gemma": "GemmaForCausalLM"}
_ACT = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def config_to_hf(cfg: LlamaConfig) -> dict[str, Any]:
    """The family's config.json for `cfg` (llama_hf.config_from_hf reads it back to `cfg`)."""
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": _ACT[cfg.activation],
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "torch_dtype": "float32",
        "use_cache": True,
        # not the family's defaults (Phi-3's are 32000, beyond a small vocabulary): export sets them
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if cfg.rope_type != "default":
        out["rope_scaling"] = {"rope_type": cfg.rope_type, "factor": cfg.rope_factor}
        if cfg.rope_type == "llama3":
            out["rope_scaling"].update(low_freq_factor=cfg.rope_low_freq_factor,
                                       high_freq_factor=cfg.rope_high_freq_factor,
                                       original_max_position_embeddings=cfg.rope_original_max_positions)
    if cfg.partial_rotary_factor != 1.0:
        out["partial_rotary_factor"] = cfg.partial_rotary_factor
    if cfg.family in ("llama", "gemma"):
        out["attention_bias"] = cfg.qkv_bias
    if cfg.family == "llama":
        out["mlp_bias"] = cfg.mlp_bias
    if cfg.family == "gemma":
        out["hidden_activation"] = out["hidden_act"]
    if cfg.family in ("mistral", "phi3"):
        out["sliding_window"] = cfg.sliding_window
    if cfg.family == "qwen2":
        out["use_sliding_window"] = False
    return out


def _split(cfg: LlamaConfig) -> dict[str, tuple[list[str], list[int]]]:
    """danlu's fused layer -> transformers' layers and their output rows."""
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    if cfg.family == "phi3":
        return {"attn.qkv": (["self_attn.qkv_proj"], [q + 2 * kv]),
                "mlp.gate_up": (["mlp.gate_up_proj"], [2 * cfg.intermediate_size])}
    return {"attn.qkv": (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], [q, kv, kv]),
            "mlp.gate_up": (["mlp.gate_proj", "mlp.up_proj"], [cfg.intermediate_size] * 2)}


_RENAME = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
           "attn.o": "self_attn.o_proj", "mlp.down": "mlp.down_proj"}


def _hf_names(name: str, cfg: LlamaConfig) -> tuple[list[str], list[int] | None]:
    """transformers' names for danlu's parameter or layer `name` (without .weight/.bias), and
    the row sizes to split it into (None: one name, not split)."""
    if name in ("embed", "norm"):
        return [f"model.{'embed_tokens' if name == 'embed' else 'norm'}"], None
    if name == "lm_head":
        return ["lm_head"], None
    _, i, rest = name.split(".", 2)  # layers.<i>.<rest>
    if rest in _split(cfg):
        names, sizes = _split(cfg)[rest]
        return [f"model.layers.{i}.{n}" for n in names], sizes if len(names) > 1 else None
    return [f"model.layers.{i}.{_RENAME[rest]}"], None


def state_to_hf(state: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name, _, kind = key.rpartition(".")  # kind: weight or bias
        if name == "lm_head" and cfg.tie_embeddings:
            continue  # transformers ties it to the embeddings again
        names, sizes = _hf_names(name, cfg)
        parts = value.split(sizes) if sizes else [value]
        for n, p in zip(names, parts, strict=True):
            out[f"{n}.{kind}"] = p.detach().to("cpu", torch.float32).contiguous().clone()
    return out


def _write_folder(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Build the folder beside `out_dir`, then rename it into place: never half written."""
    with fileio.atomic_dir(out_dir) as tmp:
        write(tmp)
    return out_dir


def export_llama_run(run_path: Path, out_dir: Path, adapter_only: bool = False) -> Path:
    """A causal_lm run -> a Hugging Face folder (or, adapter_only, its peft adapter folder)."""
    from safetensors.torch import save_file

    from danlu.lm.load import load_run
    from danlu.run import RunDir

    run = RunDir.open(run_path)
    meta = run.read_model_json()
    if adapter_only:
        return export_adapter(run_path, out_dir, meta)
    lm = load_run(run_path)
    cfg: LlamaConfig = lm.model.config
    hf_config = config_to_hf(cfg)
    eos = lm.eos_token_id
    hf_tok = lm.tokenizer.hf  # type: ignore[attr-defined]
    gen = {"eos_token_id": eos, "bos_token_id": hf_tok.bos_token_id, "pad_token_id": hf_tok.pad_token_id}
    gen = {k: v for k, v in gen.items() if v is not None}
    hf_config.update(gen)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        weights = state_to_hf(lm.model.state_dict(), cfg)
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        for f in TOKENIZER_FILES:
            if (run_path / f).is_file():
                shutil.copy2(run_path / f, tmp / f)

    return _write_folder(out_dir, write)


def export_adapter(run_path: Path, out_dir: Path, meta: dict[str, Any]) -> Path:
    """The run's LoRA adapters (run/adapter, peft's format on danlu's names) as a peft
    adapter folder of transformers' names, for the base model `model.from` names."""
    from safetensors.torch import load_file, save_file

    adapter = run_path / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():
        raise DanluError(
            f"'{run_path}' trained every weight (no adapter/ folder); export it without --adapter-only"
        )
    cfg = LlamaConfig(**meta["model"]["llama"])
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    state: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for key, value in load_file(str(adapter / "adapter_model.safetensors")).items():
        # base_model.model.<danlu layer>.lora_A.weight -> base_model.model.<transformers layer>.lora_A.weight
        layer, _, tail = key.removeprefix("base_model.model.").partition(".lora_")
        names, sizes = _hf_names(layer, cfg)
        # lora_B's rows are the fused layer's outputs, split; lora_A (the input side) is shared
        parts = list(value.split(sizes)) if tail.startswith("B") and sizes else [value] * len(names)
        for n, p in zip(names, parts, strict=True):
            state[f"base_model.model.{n}.lora_{tail}"] = p.contiguous().clone()
            targets.add(n.rpartition(".")[2])
    config.update(target_modules=sorted(targets), task_type="CAUSAL_LM", auto_mapping=None,
                  base_model_name_or_path=meta.get("fine_tuned_from"))

    def write(tmp: Path) -> None:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(state, tmp / "adapter_model.safetensors", metadata={"format": "pt"})

    return _write_folder(out_dir, write)
