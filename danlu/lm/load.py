"""Loading a language model: a model reference (danlu/hub.py) becomes a `LoadedLM`.

A reference names one of three kinds of model:
  - "danlu-run": a danlu run folder of a language-modeling run (config.yaml + model.json +
    model.safetensors + tokenizer.json): danlu's GPT;
  - "hf-gpt2": a Hugging Face folder whose config.json says model_type gpt2: loaded into
    danlu's GPT (danlu/lm/hf.py), so generation takes danlu's KV-cache path;
  - "hf-causal-lm": any other Hugging Face causal-LM folder: transformers'
    AutoModelForCausalLM, which then generates with its own `generate`.
A hub id is fetched to a folder first. Text generation from a LoadedLM, whatever its kind,
is danlu/lm/complete.py; `danlu generate`, `danlu evaluate --text`, `danlu export`,
fine-tuning (`model.from`) and the Python API load through here.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from danlu import hub
from danlu.errors import DanluError, choose_from, one_line
from danlu.lm.model import GPT, GPTConfig
from danlu.lm.options import DTYPES
from danlu.lm.tokenizer import HFTokenizer, TextTokenizer, Tokenizer

KINDS = ("danlu-run", "hf-gpt2", "hf-causal-lm")


# ---------------------------------------------------------------------------- the loaded model


@dataclass
class LoadedLM:
    model: Any  # danlu's GPT or a transformers causal LM
    tokenizer: Tokenizer
    kind: str  # one of KINDS
    block_size: int | None  # longest sequence (prompt + new tokens); None: not limited
    source: str = ""  # the folder it was loaded from
    eos_token_id: int | list[int] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            eos = self.eos_token_id
            pad = eos[0] if isinstance(eos, list) and eos else eos
        return int(pad) if pad is not None else 0

    @property
    def is_danlu(self) -> bool:
        return self.kind in ("danlu-run", "hf-gpt2")


def resolve_lm(
    ref: str | Path,
    *,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    device: str | None = None,
) -> LoadedLM:
    """Load the language model `ref` names (see the module docstring) in eval mode.

    dtype: "float32" | "bfloat16" (default: as stored for HF models, float32 for danlu's);
    device: "cpu", "cuda", ... (default: cuda when available)."""
    if dtype is not None and dtype not in DTYPES:
        raise choose_from(dtype, DTYPES, "dtype")
    lm = _from_path(hub.locate_model(ref), trust_remote_code)
    return _place(lm, dtype, device)


_CACHE: dict[tuple[Any, ...], LoadedLM] = {}
_CACHE_LOCK = threading.Lock()


def load_cached(
    ref: str | Path, *, trust_remote_code: bool = False, dtype: str | None = None, device: str | None = None
) -> LoadedLM:
    """resolve_lm, once per (ref, options) in this process."""
    path = Path(str(ref)).expanduser()
    key = (str(path.resolve()) if path.exists() else str(ref), trust_remote_code, dtype, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = resolve_lm(ref, trust_remote_code=trust_remote_code, dtype=dtype, device=device)
        return _CACHE[key]


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()

def _place(lm: LoadedLM, dtype: str | None, device: str | None) -> LoadedLM:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        lm.model = lm.model.to(device)
        if dtype is not None:
            from danlu.lm import cpu

            # danlu's GPT keeps float32 activations beside bf16 weights on CPU (cpu.cast)
            is_gpt = isinstance(lm.model, GPT)
            lm.model = cpu.cast(lm.model, DTYPES[dtype]) if is_gpt else lm.model.to(DTYPES[dtype])
    except (RuntimeError, AssertionError) as e:
        raise DanluError(f"cannot move the model to {device}/{dtype}: {e}") from None
    lm.model.eval()
    return lm


def _from_path(path: Path, trust_remote_code: bool) -> LoadedLM:
    if not path.is_dir():
        raise DanluError(f"'{path}' is a file; give the model's folder")
    if (path / "model.json").is_file() or (path / "config.yaml").is_file():
        return load_run(path)
    if not (path / "config.json").is_file():
        raise DanluError(
            f"'{path}' has no config.json; expected a Hugging Face model folder (config.json, weights, "
            "tokenizer files) or a danlu run folder (config.yaml, model.json)"
        )
    config_file = path / "config.json"
    try:
        hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DanluError(f"cannot read '{config_file}': {e}") from None
    if not any((path / f).is_file() for f in hub.WEIGHT_FILES) and not list(path.glob("*.safetensors")):
        raise DanluError(
            f"no weights in '{path}': expected model.safetensors (or model.safetensors.index.json) "
            "or pytorch_model.bin"
        )
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        raise DanluError(
            f"no tokenizer files in '{path}': expected tokenizer.json (or vocab.json + merges.txt, "
            "or tokenizer.model); save the tokenizer into the model folder"
        )
    if hf_config.get("model_type") == "gpt2":
        from danlu.lm.hf import config_from_hf

        try:
            config_from_hf(hf_config, config_file)
        except DanluError:
            pass  # a GPT-2 variant danlu's GPT does not implement: transformers runs it
        else:
            return _load_hf_gpt2(path, hf_config)
    return _load_hf_causal_lm(path, hf_config, trust_remote_code)


def load_run(path: Path) -> LoadedLM:
    """A danlu language-modeling run folder as a LoadedLM (kind "danlu-run")."""
    from safetensors.torch import load_model

    from danlu.run import RunDir

    run = RunDir.open(path)
    meta = run.read_model_json()
    task = meta.get("task")
    task_type = task.get("type") if isinstance(task, dict) else task
    if task_type != "language_modeling":
        raise DanluError(
            f"'{path}' is a danlu {task_type or 'unknown'} run; text generation needs a language_modeling run"
        )
    model_cfg = dict(meta.get("model") or {})
    if model_cfg.get("type", "gpt") != "gpt":
        raise DanluError(f"'{path}' holds a '{model_cfg.get('type')}' model; only 'gpt' generates text")
    schema = meta.get("schema") or {}
    vocab = schema.get("vocab_size")
    if not isinstance(vocab, int):
        raise DanluError(f"'{run.model_json}' lacks schema.vocab_size; cannot rebuild the model")
    fields = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}
    model_cfg.setdefault("activation", "gelu_tanh")  # runs saved before the option existed
    config = GPTConfig(vocab_size=vocab, **{k: v for k, v in model_cfg.items() if k in fields})
    model = GPT(config)
    try:
        load_model(model, str(run.weights), strict=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise DanluError(f"cannot load '{run.weights}' into the GPT of model.json: {e}") from None
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        raise DanluError(f"'{tok_file}' not found; a language-model run keeps its tokenizer there")
    eos = schema.get("eos_token_id")
    tokenizer = TextTokenizer.from_file(tok_file, eos, schema.get("pad_token_id"))
    return LoadedLM(model, tokenizer, "danlu-run", config.block_size, str(path), eos_token_id=eos)


def _auto_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError, ImportError, ...
        raise DanluError(f"cannot load the tokenizer in '{path}': {one_line(e)}") from None


def _eos_from_config(path: Path, hf_config: dict[str, Any], vocab_size: int | None) -> list[int]:
    """EOS ids as transformers' generate uses them: generation_config.json, else config.json."""
    eos: Any = None
    gen_file = path / "generation_config.json"
    if gen_file.is_file():
        try:
            eos = json.loads(gen_file.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError):
            eos = None
    if eos is None:
        eos = hf_config.get("eos_token_id")
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return [i for i in ids if isinstance(i, int) and 0 <= i < (vocab_size or 1 << 62)]


def _load_hf_gpt2(path: Path, hf_config: dict[str, Any]) -> LoadedLM:
    from danlu.lm.hf import from_hf

    model = from_hf(path)
    hf_tok = _auto_tokenizer(path)
    eos = _eos_from_config(path, hf_config, model.config.vocab_size)
    if not eos and hf_tok.eos_token_id is not None:
        eos = [hf_tok.eos_token_id]
    pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_config.get("pad_token_id")
    tokenizer = HFTokenizer(hf_tok, eos[0] if eos else None, pad)
    return LoadedLM(model, tokenizer, "hf-gpt2", model.config.block_size, str(path), eos_token_id=eos or None)


def _load_hf_causal_lm(path: Path, hf_config: dict[str, Any], trust_remote_code: bool) -> LoadedLM:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:
        msg = one_line(e)
        if "trust_remote_code" in msg and not trust_remote_code:
            raise DanluError(
                f"'{path}' needs its own code to load; pass --trust-remote-code if you trust it"
            ) from None
        raise DanluError(f"cannot load '{path}' as a causal language model: {msg}") from None
    tokenizer = HFTokenizer(_auto_tokenizer(path, trust_remote_code))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    cfg = model.config
    block = None
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            block = value
            break
    eos_ids = list(eos) if isinstance(eos, list | tuple) else eos
    return LoadedLM(model, tokenizer, "hf-causal-lm", block, str(path), eos_token_id=eos_ids)
