"""Loading a language model: a model reference (danlu/hub.py) becomes a `LoadedLM`.

A reference names one of four kinds of model:
  - "danlu-run": a danlu run folder of a language-modeling run (config.yaml + model.json +
    model.safetensors + tokenizer.json): danlu's GPT;
  - "hf-gpt2": a Hugging Face folder whose config.json says model_type gpt2: loaded into
    danlu's GPT (danlu/lm/hf.py), so generation takes danlu's KV-cache path;
  - "hf-llama": a Hugging Face folder of the Llama family (llama, qwen2, mistral, phi3,
    gemma; danlu/lm/llama_hf.py), or a GGUF file of one: danlu's Llama (danlu/lm/llama.py),
    on danlu's KV-cache path too;
  - "hf-causal-lm": any other Hugging Face causal-LM folder (or GGUF file): transformers'
    AutoModelForCausalLM, which then generates with its own `generate`.
The engine decides between the last ones: "auto" (danlu's where it implements the model),
"danlu" (an error where it does not), "transformers" (always transformers). A GGUF file
(llama.cpp's format; a folder holding one) is dequantised to float32 by transformers
(`from_pretrained(folder, gguf_file=...)`, the `gguf` package) and then converted.
A hub id is fetched to a folder first. Text generation from a LoadedLM, whatever its kind,
is danlu/lm/complete.py; `danlu generate`, `danlu evaluate --text`, `danlu export`,
fine-tuning (`model.from`) and the Python API load through here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from danlu import hub
from danlu.errors import DanluError, choose_from, one_line
from danlu.lm.llama import Llama
from danlu.lm.model import GPT, GPTConfig
from danlu.lm.options import DTYPES
from danlu.lm.tokenizer import HFTokenizer, TextTokenizer, Tokenizer

KINDS = ("danlu-run", "hf-gpt2", "hf-llama", "hf-causal-lm")
ENGINES = ("auto", "danlu", "transformers")


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
        return self.kind in ("danlu-run", "hf-gpt2", "hf-llama")


def resolve_lm(
    ref: str | Path,
    *,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    device: str | None = None,
    engine: str = "auto",
) -> LoadedLM:
    """Load the language model `ref` names (see the module docstring) in eval mode.

    dtype: "float32" | "bfloat16" (default: as stored for HF models, float32 for danlu's) | "int8"
    (danlu's engine only: int8 weights, danlu/lm/cpu/quant.py; the files are never rewritten);
    device: "cpu", "cuda", ... (default: cuda when available); engine: one of ENGINES."""
    if dtype is not None and dtype not in DTYPES:
        raise choose_from(dtype, DTYPES, "dtype")
    if engine not in ENGINES:
        raise choose_from(engine, ENGINES, "engine")
    lm = _from_path(hub.locate_model(ref), trust_remote_code, engine)
    return _place(lm, dtype, device)


_CACHE: dict[tuple[Any, ...], LoadedLM] = {}
_CACHE_LOCK = threading.Lock()


def load_cached(
    ref: str | Path,
    *,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    device: str | None = None,
    engine: str = "auto",
) -> LoadedLM:
    """resolve_lm, once per (ref, options) in this process."""
    path = Path(str(ref)).expanduser()
    key = (str(path.resolve()) if path.exists() else str(ref), trust_remote_code, dtype, device, engine)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = resolve_lm(
                ref, trust_remote_code=trust_remote_code, dtype=dtype, device=device, engine=engine
            )
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

            # danlu's models keep float32 activations beside bf16 weights on CPU (cpu.cast)
            ours = isinstance(lm.model, GPT | Llama)
            if dtype == "int8" and not ours:
                model_type = getattr(getattr(lm.model, "config", None), "model_type", "?")
                raise DanluError(
                    f"--dtype int8 covers {cpu.quant.COVERED}; '{lm.source}' is a '{model_type}' model"
                    " that transformers runs: use float32 or bfloat16"
                )
            lm.model = cpu.cast(lm.model, DTYPES[dtype]) if ours else lm.model.to(DTYPES[dtype])
    except (RuntimeError, AssertionError) as e:
        raise DanluError(f"cannot move the model to {device}/{dtype}: {e}") from None
    lm.model.eval()
    return lm


def _from_path(path: Path, trust_remote_code: bool, engine: str = "auto") -> LoadedLM:
    gguf = hub.gguf_file(path)
    if gguf is not None:
        return _load_gguf(gguf, engine)
    if not path.is_dir():
        raise DanluError(f"'{path}' is a file; give the model's folder (or a .gguf file)")
    if (path / "model.json").is_file() or (path / "config.yaml").is_file():
        if engine == "transformers":
            raise DanluError(
                f"'{path}' is a danlu run, which runs on danlu's engine only; drop engine transformers"
            )
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
    if engine != "transformers":
        kind = _danlu_kind(hf_config, str(config_file), engine)
        if kind == "hf-gpt2":
            return _load_hf_gpt2(path, hf_config)
        if kind == "hf-llama":
            from danlu.lm import llama_hf

            return _hf_lm(llama_hf.from_hf(path, hf_config), path, hf_config, "hf-llama")
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
    if model_cfg.get("type") == "causal_lm":
        return _load_llama_run(run, model_cfg, meta.get("schema") or {})
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


def _load_llama_run(run: Any, model_cfg: dict[str, Any], schema: dict[str, Any]) -> LoadedLM:
    """A causal_lm run (danlu/lm/finetune.py): danlu's Llama from model.json's `llama`
    config and the run's weights (adapters merged), the transformers tokenizer files beside."""
    from safetensors.torch import load_model

    from danlu.lm.llama import LlamaConfig, rope_frequencies

    try:
        config = LlamaConfig(**model_cfg["llama"])
    except (KeyError, TypeError) as e:
        raise DanluError(f"'{run.model_json}' lacks a valid model.llama config: {e}") from None
    model = Llama(config)
    try:
        load_model(model, str(run.weights), strict=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise DanluError(f"cannot load '{run.weights}' into the Llama of model.json: {e}") from None
    model.inv_freq = rope_frequencies(config)
    eos = schema.get("eos_token_id")
    hf_tok = _auto_tokenizer(run.path)
    tokenizer = HFTokenizer(hf_tok, eos, hf_tok.pad_token_id)
    return LoadedLM(model, tokenizer, "danlu-run", config.block_size, str(run.path), eos_token_id=eos)


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


def _danlu_kind(hf_config: dict[str, Any], where: str, engine: str) -> str | None:
    """The kind ("hf-gpt2" or "hf-llama") where danlu's engine implements the config, else
    None (transformers runs it); with engine "danlu" the reason why not, as a DanluError."""
    from danlu.lm import llama_hf
    from danlu.lm.hf import config_from_hf

    model_type = hf_config.get("model_type")
    try:
        if model_type == "gpt2":
            config_from_hf(hf_config, Path(where))
            return "hf-gpt2"
        if model_type in llama_hf.FAMILIES:
            llama_hf.config_from_hf(hf_config, where)
            return "hf-llama"
        raise llama_hf.unsupported(f"'{where}' has model_type {model_type!r}")
    except DanluError:
        if engine == "danlu":
            raise
        return None  # a model (or variant) danlu's engine does not implement


def _load_hf_gpt2(path: Path, hf_config: dict[str, Any]) -> LoadedLM:
    from danlu.lm.hf import from_hf

    return _hf_lm(from_hf(path), path, hf_config, "hf-gpt2")


def _hf_lm(model: GPT | Llama, path: Path, hf_config: dict[str, Any], kind: str) -> LoadedLM:
    """A Hugging Face folder's weights in one of danlu's models, with the folder's tokenizer."""
    hf_tok = _auto_tokenizer(path)
    eos = _eos_from_config(path, hf_config, model.config.vocab_size)
    if not eos and hf_tok.eos_token_id is not None:
        eos = [hf_tok.eos_token_id]
    pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_config.get("pad_token_id")
    tokenizer = HFTokenizer(hf_tok, eos[0] if eos else None, pad)
    return LoadedLM(model, tokenizer, kind, model.config.block_size, str(path), eos_token_id=eos or None)


@contextlib.contextmanager
def _no_gguf_progress_bar() -> Iterator[None]:
    """transformers' GGUF loader draws its own tqdm bar, which disable_progress_bar leaves on
    (it would sit on stderr beside a one-line error)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    if not hasattr(gguf_utils, "tqdm"):
        yield
        return
    with mock.patch.object(gguf_utils, "tqdm", lambda iterable, *args, **kwargs: iterable):
        yield


def _load_gguf(file: Path, engine: str) -> LoadedLM:
    """A GGUF file: transformers dequantises it to float32 (needs the `gguf` package), then
    danlu's Llama takes the weights where it implements the architecture."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise DanluError(
            f"'{file}' is a GGUF file; reading one needs the gguf package (pip install 'danlu[llm]')"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from danlu.lm import llama_hf

    hf_logging.disable_progress_bar()
    folder, name = str(file.parent), file.name
    try:
        with _no_gguf_progress_bar():
            hf_model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False
            )
            hf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    except Exception as e:  # gguf and transformers raise ValueError, NotImplementedError, KeyError, ...
        raise DanluError(f"cannot load the GGUF file '{file}': {one_line(e)}") from None
    gen = getattr(hf_model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        eos = hf_tok.eos_token_id
    eos_ids = list(eos) if isinstance(eos, list | tuple) else eos
    tokenizer = HFTokenizer(hf_tok)
    if engine != "transformers" and _danlu_kind(hf_model.config.to_dict(), str(file), engine) == "hf-llama":
        model = llama_hf.from_transformers(hf_model, str(file))
        block = model.config.block_size
        return LoadedLM(model, tokenizer, "hf-llama", block, str(file), eos_token_id=eos_ids)
    block = getattr(hf_model.config, "max_position_embeddings", None)
    return LoadedLM(hf_model.eval(), tokenizer, "hf-causal-lm", block, str(file), eos_token_id=eos_ids)


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
