"""Hugging Face GPT-2 folders <-> danlu's GPT: `from_hf` loads one, `export_hf` writes one
that transformers.GPT2LMHeadModel.from_pretrained loads. The parameter names already match;
the Conv1D matrices (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) are transposed."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from danlu import fileio
from danlu.errors import DanluError
from danlu.lm.model import GPT, GPTConfig

_CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# the tanh-approximate GELU under its Hugging Face names
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def config_from_hf(hf: dict[str, Any], config_file: Path) -> GPTConfig:
    """danlu's GPTConfig for a Hugging Face GPT-2 config.json; a DanluError for a variant
    danlu's GPT does not implement (transformers then runs it, see danlu/lm/load.py)."""
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise DanluError(f"'{config_file}' has model_type {model_type!r}; only 'gpt2' can be loaded")
    n_embd = hf.get("n_embd", 768)
    act = hf.get("activation_function", "gelu_new")
    if act not in (*_GELU_TANH, "gelu"):
        raise DanluError(
            f"'{config_file}' has activation_function {act!r}; valid: gelu, {', '.join(_GELU_TANH)}"
        )
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise DanluError(f"'{config_file}' has n_inner {hf['n_inner']}; only 4 * n_embd is supported")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise DanluError(f"'{config_file}' changes attention scaling; only GPT-2's 1/sqrt(head_dim)")
    if hf.get("add_cross_attention", False):
        raise DanluError(f"'{config_file}' has add_cross_attention; only decoder-only GPT-2")
    return GPTConfig(
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", 1024),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        dropout=0.0,
        bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation="gelu" if act == "gelu" else "gelu_tanh",
    )


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    binary = path / "pytorch_model.bin"
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(path / shard))
            return state
        if binary.is_file():
            # weights_only: a pickle from the internet must not run code
            return torch.load(binary, map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise DanluError(f"cannot read the weights in '{path}': {e}") from e
    raise DanluError(
        f"no weights in '{path}': expected model.safetensors (or model.safetensors.index.json) "
        "or pytorch_model.bin"
    )


def from_hf(path: str | Path) -> GPT:
    """Load a Hugging Face GPT-2 folder (config.json + model.safetensors or
    pytorch_model.bin)."""
    path = Path(path)
    if not path.is_dir():
        raise DanluError(f"Hugging Face model folder '{path}' does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise DanluError(f"'{config_file}' not found; a Hugging Face GPT-2 folder needs config.json")
    try:
        hf = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DanluError(f"cannot read '{config_file}': {e}") from e
    config = config_from_hf(hf, config_file)
    state = read_hf_weights(path)

    model = GPT(config)
    ours = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers stored by old checkpoints
        if name != "lm_head.weight":
            name = "transformer." + name
        if name not in ours:
            raise DanluError(f"unexpected weight '{name}' in '{path}' for a GPT-2 model")
        if name.endswith(_CONV1D_WEIGHTS):
            tensor = tensor.t()
        if tensor.shape != ours[name].shape:
            raise DanluError(
                f"weight '{name}' in '{path}' has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(ours[name].shape)}"
            )
        loaded[name] = tensor
    if config.tie_embeddings:
        loaded.pop("lm_head.weight", None)
        ours.pop("lm_head.weight", None)
    missing = sorted(set(ours) - set(loaded))
    if missing:
        raise DanluError(f"weights in '{path}' lack {len(missing)} tensors, e.g. '{missing[0]}'")
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name in loaded:
                p.copy_(loaded[name])
    return model


def export_hf(
    model: GPT,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as a Hugging Face GPT-2 folder (config.json + model.safetensors, plus
    the tokenizer files of `tokenizer_dir`). The folder is built beside `out_dir` and renamed
    into place, so a reader never sees half of it. `extra_config` adds config.json keys
    (e.g. eos_token_id, bos_token_id, pad_token_id)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DanluError(f"'{out_dir}' already exists and is not empty; pass overwrite=True")
    tokenizer_files: list[Path] = []
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        tokenizer_files = [tokenizer_dir / f for f in _TOKENIZER_FILES if (tokenizer_dir / f).is_file()]
        if not tokenizer_files:
            raise DanluError(
                f"no tokenizer files in '{tokenizer_dir}'; expected one of {', '.join(_TOKENIZER_FILES)}"
            )

    cfg = model.config
    dtype = next(model.parameters()).dtype
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu" if cfg.activation == "gelu" else "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        # a bias-free model (nanoGPT's bias=False) is exported with zero biases, which GPT-2's
        # Conv1D and LayerNorm add exactly: the same model, read back as bias=True
        "danlu_config": {**asdict(cfg), "bias": True},
    }
    if cfg.vocab_size <= 50256:  # not GPT-2's vocabulary: its default <|endoftext|> id does not exist
        hf_config.update(bos_token_id=None, eos_token_id=None)
    hf_config.update({k: v for k, v in (extra_config or {}).items() if v is not None})
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # HF re-ties it to wte on load; safetensors refuses shared storage
        if name.endswith(_CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[name] = tensor.detach().to("cpu").contiguous().clone()
        bias = name.removesuffix("weight") + "bias"
        if not cfg.bias and name.endswith(_CONV1D_WEIGHTS + (".ln_1.weight", ".ln_2.weight", "ln_f.weight")):
            state[bias] = torch.zeros(state[name].shape[-1], dtype=state[name].dtype)

    with fileio.atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        for f in tokenizer_files:
            shutil.copy2(f, tmp / f.name)
    return out_dir
