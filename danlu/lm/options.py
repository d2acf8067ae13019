"""Generation options: the one options type and the one validation of every way danlu
generates text (danlu's engine for its GPT, transformers' generate for other causal LMs;
ARCHITECTURE.md, "Generation engines")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from danlu.errors import DanluError, choose_from, did_you_mean

# the weights' dtype by name; "int8" is danlu's int8 weight-only tier (danlu/lm/cpu/quant.py:
# int8 weights in groups, float32 activations), for danlu's own engine only
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.int8}


@dataclass
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float | None = None  # 0 or None: greedy
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0  # beam search: score / generated_length ** length_penalty
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    eos_token_id: int | list[int] | None = None
    truncate_prompt: bool = False  # drop the oldest prompt tokens instead of failing
    dtype: str | None = None  # "bfloat16" or "int8" runs a cast (quantized) copy of the model

    def __post_init__(self) -> None:
        self.validate()

    @property
    def do_sample(self) -> bool:
        return bool(self.temperature)

    @property
    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, int):
            return [self.eos_token_id]
        return list(self.eos_token_id)

    def validate(self, stream: bool = False) -> None:
        """Every check of the options, for danlu's engine and transformers' generate alike;
        `stream`: the tokens are to be handed out as they come."""
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DanluError(f"{name} must be a positive integer, got {value!r}")

        positive_int("max_new_tokens")
        positive_int("num_beams")
        positive_int("num_return_sequences")
        if self.temperature is not None and not self.temperature >= 0:
            raise DanluError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None:
            positive_int("top_k")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise DanluError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise DanluError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise DanluError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise choose_from(self.dtype, DTYPES, "dtype")
        if isinstance(self.stop, str):
            raise DanluError(f"stop must be a list of strings, got the string {self.stop!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise DanluError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if any(not isinstance(e, int) or e < 0 for e in self.eos_ids):
            raise DanluError(f"eos_token_id must be token ids >= 0, got {self.eos_token_id!r}")

        filters = [n for n in ("top_k", "top_p", "min_p") if getattr(self, n) is not None]
        if filters and not self.do_sample:
            raise DanluError(
                f"{', '.join(filters)} only apply when sampling; set temperature > 0 or drop them"
            )
        if self.num_beams > 1:
            if self.do_sample:
                raise DanluError(
                    "num_beams > 1 conflicts with sampling (temperature > 0); use one or the other"
                )
            if self.num_return_sequences > self.num_beams:
                raise DanluError(
                    f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                    f"({self.num_beams})"
                )
            if self.stop:
                raise DanluError("stop strings are not supported with num_beams > 1")
            if stream:
                raise DanluError("streaming needs num_beams=1; beam search settles tokens only at the end")
        elif self.num_return_sequences > 1 and not self.do_sample:
            raise DanluError(
                "num_return_sequences > 1 needs sampling (temperature > 0) or num_beams > 1; "
                "greedy decoding returns the same sequence every time"
            )


_OPTION_NAMES = {f.name for f in dataclasses.fields(GenerationOptions)}


def make_options(lm: Any = None, **options: Any) -> GenerationOptions:
    """GenerationOptions from keyword arguments (the Python API's and the CLI's); EOS
    defaults to the loaded model's (`lm`, a danlu.lm.load.LoadedLM)."""
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
