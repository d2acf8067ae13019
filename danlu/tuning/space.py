"""The search space: `tune.space` entries -> Params, each checked against the run-config schema."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import optuna

from danlu import config as config_mod
from danlu.errors import DanluError, did_you_mean

KINDS = ("choice", "grid", "float", "log_float", "int", "log_int")


@dataclass(frozen=True)
class Param:
    """One searched key. Choices that Optuna cannot store (lists, mappings) are stored as
    their JSON text and decoded back when the config is built."""

    key: str
    kind: str  # choice | float | log_float | int | log_int
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        d = optuna.distributions
        if self.kind == "choice":
            return d.CategoricalDistribution([_encode(v) for v in self.values])
        log = self.kind.startswith("log_")
        if self.kind.endswith("int"):
            return d.IntDistribution(int(self.low), int(self.high), log=log, step=int(self.step or 1))
        return d.FloatDistribution(self.low, self.high, log=log, step=self.step)

    def grid(self) -> list[Any]:
        if self.kind == "choice":
            return [_encode(v) for v in self.values]
        return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))  # int ranges

    def decode(self, stored: Any) -> Any:
        if self.kind == "choice":
            return {_encode(v): v for v in self.values}.get(stored, stored)
        return stored


def _encode(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return json.dumps(v)


def parse_space(space: dict[str, Any], raw: dict[str, Any], where: str) -> list[Param]:
    """tune.space -> Params; every key must be a config key and every value valid there."""
    if not space:
        raise DanluError(
            f"{where}: tune.space is empty; give at least one key,"
            " e.g. train.lr: {log_float: [1.0e-4, 1.0e-1]}"
        )
    params = [_parse_one(key, spec, where) for key, spec in space.items()]
    base = {k: v for k, v in raw.items() if k != "tune"}
    for p in params:
        for value in _samples(p):
            trial = copy.deepcopy(base)
            config_mod.set_path(trial, p.key, value, where, label="tune.space:")
            try:
                config_mod.validate(trial, f"{where}: tune.space.{p.key} value {value!r}")
            except DanluError as e:
                raise DanluError(str(e)) from None
    return params


def _parse_one(key: str, spec: Any, where: str) -> Param:
    at = f"{where}: tune.space.{key}"
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict) or len(spec) != 1:
        raise DanluError(
            f"{at}: give a list of values or one of {{choice: [...]}}, {{float: [low, high]}},"
            f" {{log_float: [low, high]}}, {{int: [low, high]}}, {{log_int: [low, high]}}; got {spec!r}"
        )
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        hint = (
            f" (keys are dotted paths: {key}.{kind})"
            if isinstance(args, dict | list) and "." not in key
            else ""
        )
        raise DanluError(
            f"{at}: unknown kind '{kind}'{did_you_mean(kind, KINDS)}; valid: {', '.join(KINDS)}{hint}"
        )
    if kind in ("choice", "grid"):
        if not isinstance(args, list):
            raise DanluError(f"{at}: {kind} takes a list of values, got {args!r}")
        if not args:
            raise DanluError(f"{at}: empty {kind} list; give at least one value")
        encoded = [_encode(v) for v in args]
        if len(set(map(repr, encoded))) != len(encoded):
            raise DanluError(f"{at}: {kind} lists a value twice: {args}")
        return Param(key, "choice", tuple(args))
    is_int = kind.endswith("int")
    if not isinstance(args, list) or len(args) not in (2, 3) or not all(_is_number(a, is_int) for a in args):
        number = "integers" if is_int else "numbers"
        raise DanluError(f"{at}: {kind} takes [low, high] or [low, high, step] ({number}), got {args!r}")
    low, high, *rest = args
    step = rest[0] if rest else None
    if low > high:
        raise DanluError(f"{at}: low {low} is above high {high}")
    if kind.startswith("log_"):
        if low <= 0:
            raise DanluError(
                f"{at}: {kind} range [{low}, {high}] must be above 0 (a log scale cannot reach 0 or"
                f" negatives); use {kind.removeprefix('log_')} for it"
            )
        if step is not None:
            raise DanluError(f"{at}: {kind} takes no step (Optuna's log scales are continuous)")
    if step is not None and step <= 0:
        raise DanluError(f"{at}: step {step} must be above 0")
    if is_int:
        return Param(key, kind, low=int(low), high=int(high), step=step)
    return Param(key, kind, low=float(low), high=float(high), step=None if step is None else float(step))


def _is_number(v: Any, integer: bool) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) if integer else isinstance(v, int | float)


def _samples(p: Param) -> list[Any]:
    """Values that stand for the whole range when checking it against the config schema:
    the ends and an inner point (which catches a float range on an integer key)."""
    if p.kind == "choice":
        return list(p.values)
    if p.kind.endswith("int"):
        return [int(p.low), int(p.high)]
    inner = (
        p.low + (p.high - p.low) * 0.3819660113 if p.kind == "float" else math.sqrt(p.low * p.high) * 1.0001
    )
    return [p.low, p.high, inner]
