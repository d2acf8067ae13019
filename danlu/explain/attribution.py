"""The attribution methods over one flat input space, whatever the kind.

A kind hands them an `Attributable` (danlu/explain/tabular.py builds one for tables): the
rows as a float matrix `inputs` (N, D) in the space the model computes in (scaled numbers,
one-hot columns, looked-up category embeddings), the `baseline` row (D,), a `forward` from
(n, D) to the model's outputs (n, K), the output attributed for each row (`targets`), and
`groups`: which of the D dimensions make up each of the user's columns. Every method returns (N, len(groups))
attributions in the user's columns.

- `integrated_gradients`: Captum's IntegratedGradients (Gauss-Legendre; the trapezoid rule
  beyond 64 steps), per row with the
  step count doubled until completeness holds: |sum(attr) - (f(x) - f(b))| <= 1% of
  |f(x) - f(b)| (or 1e-6 when that difference is tiny); a dimension's attribution is summed
  into its column, which keeps completeness.
- `exact_shapley`: Shapley values over the columns by enumerating all 2^M coalitions, with
  the value function v(S) = f(x with the columns outside S set to the baseline).
- `kernel_shap`: the same value function, estimated from sampled coalitions (KernelSHAP's
  weighted least squares with the efficiency constraint); exact when every coalition fits.
- `occlusion`: f(x) - f(x with one column set to the baseline).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

TOLERANCE = 0.01  # completeness: relative to |f(x) - f(baseline)|
ABS_FLOOR = 1e-6  # ... or this, when f(x) and f(baseline) (almost) agree
FIRST_STEPS = 32
MAX_STEPS = 4096
GAUSS_LEGENDRE_UP_TO = 64  # numpy's leggauss solves an n x n eigenproblem: 0.1 s at 256, a minute at 4096
MAX_EXACT = 11  # columns up to which Shapley values are enumerated exactly (2^11 coalitions)


@dataclass
class Attributable:
    """Rows in the space the attributions are computed in (see the module docstring)."""

    inputs: torch.Tensor  # (N, D) float64
    baseline: torch.Tensor  # (D,) float64
    forward: Callable[[torch.Tensor], torch.Tensor]  # (n, D) -> (n, outputs)
    groups: list[tuple[str, list[int]]]  # column name -> its dimensions of D
    targets: torch.Tensor  # (N,) output index attributed per row
    info: dict[str, object] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.groups]

    def outputs(self, z: torch.Tensor, targets: torch.Tensor, batch: int = 65536) -> torch.Tensor:
        with torch.no_grad():
            outs = [
                self.forward(z[i : i + batch]).gather(1, targets[i : i + batch, None])[:, 0]
                for i in range(0, len(z), batch)
            ]
        return torch.cat(outs)

    def to_columns(self, attr: torch.Tensor) -> np.ndarray:
        """(N, D) attributions -> (N, columns): a column's dimensions summed (no groups: as is)."""
        if not self.groups:
            return attr.numpy()
        return np.stack([attr[:, dims].sum(1).numpy() for _, dims in self.groups], axis=1)

    def column_mask(self, keep: torch.Tensor) -> torch.Tensor:
        """(K, columns) bool coalitions -> (K, D) bool: which dimensions keep the row's values."""
        m = torch.zeros(len(keep), self.inputs.shape[1], dtype=torch.bool)
        for j, (_, dims) in enumerate(self.groups):
            m[:, dims] = keep[:, j : j + 1]
        return m


@dataclass
class Result:
    attributions: np.ndarray  # (N, columns)
    output: np.ndarray  # f(x) per row
    baseline_output: np.ndarray  # f(baseline) per row (its target)
    steps: np.ndarray | None = None  # IG: steps used per row

    @property
    def completeness_error(self) -> np.ndarray:
        """|sum(attr) - (f(x) - f(b))| relative to |f(x) - f(b)|, or to ABS_FLOOR / TOLERANCE
        when the difference is smaller: <= TOLERANCE is the rule IG's steps are raised by."""
        return completeness_error(self.attributions.sum(1), self.output - self.baseline_output)


def completeness_error(total: Any, gap: Any) -> Any:
    """The relative completeness error of attributions summing to `total` (arrays or floats)."""
    return np.abs(total - gap) / np.maximum(np.abs(gap), ABS_FLOOR / TOLERANCE)


def _ends(a: Attributable) -> tuple[torch.Tensor, torch.Tensor]:
    base = a.baseline.expand_as(a.inputs)
    return a.outputs(a.inputs, a.targets), a.outputs(base.contiguous(), a.targets)


# --------------------------------------------------------------------------- integrated gradients
def integrated_gradients(
    a: Attributable, first_steps: int = FIRST_STEPS, max_steps: int = MAX_STEPS, batch: int = 1 << 16
) -> Result:
    """Captum's IG from the baseline, the steps doubled for the rows whose completeness error
    is above TOLERANCE (relative) until every row meets it or max_steps is reached."""
    from danlu.explain import captum_attr

    ig = captum_attr().IntegratedGradients(a.forward)
    fx, fb = _ends(a)
    n = len(a.inputs)
    attr = torch.zeros_like(a.inputs)
    steps = np.zeros(n, dtype=np.int64)
    todo = torch.arange(n)
    s = first_steps
    while len(todo):
        x = a.inputs[todo]
        out = ig.attribute(
            x,
            baselines=a.baseline.expand_as(x).contiguous(),
            target=a.targets[todo],
            n_steps=s,
            method=ig_method(s),
            internal_batch_size=max(1, min(len(x), batch // s)) * s,
        )
        attr[todo] = out.detach()
        steps[todo.numpy()] = s
        ok = completeness_error(out.detach().sum(1).numpy(), (fx[todo] - fb[todo]).numpy()) <= TOLERANCE
        if s * 2 > max_steps:
            break
        todo, s = todo[torch.from_numpy(~ok)], s * 2
    return Result(a.to_columns(attr), fx.numpy(), fb.numpy(), steps)


def ig_method(steps: int) -> str:
    """Captum's quadrature for a step count: Gauss-Legendre (exact for polynomials, fast for
    smooth models) up to GAUSS_LEGENDRE_UP_TO steps, then the trapezoid rule, whose nodes cost
    nothing to compute (a ReLU network's path integrand is piecewise constant, where neither
    rule beats O(1/steps))."""
    return "gausslegendre" if steps <= GAUSS_LEGENDRE_UP_TO else "riemann_trapezoid"


# --------------------------------------------------------------------------- Shapley values
def _coalition_values(
    a: Attributable, keep: torch.Tensor, rows: torch.Tensor, batch: int = 1 << 17
) -> torch.Tensor:
    """v(S) for every row and coalition: (len(rows), K), keep (K, columns) bool."""
    mask = a.column_mask(keep)  # (K, D)
    out = []
    chunk = max(1, batch // len(keep))
    for i in range(0, len(rows), chunk):
        r = rows[i : i + chunk]
        x = a.inputs[r][:, None, :]  # (n, 1, D)
        z = torch.where(mask[None], x, a.baseline[None, None, :])  # (n, K, D)
        t = a.targets[r].repeat_interleave(len(keep))
        out.append(a.outputs(z.reshape(-1, z.shape[-1]), t).reshape(len(r), len(keep)))
    return torch.cat(out)


def exact_shapley(a: Attributable) -> Result:
    """Shapley values of the columns: phi_i = sum over S not holding i of
    |S|! (M-|S|-1)! / M! * (v(S + i) - v(S)), every coalition enumerated."""
    m = len(a.groups)
    codes = torch.arange(1 << m)
    keep = ((codes[:, None] >> torch.arange(m)[None, :]) & 1).bool()  # (2^M, M)
    v = _coalition_values(a, keep, torch.arange(len(a.inputs)))  # (N, 2^M)
    sizes = keep.sum(1)
    weight = torch.tensor(
        [math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)], dtype=v.dtype
    )
    phi = torch.zeros(len(a.inputs), m, dtype=v.dtype)
    for i in range(m):
        without = codes[~keep[:, i]]
        phi[:, i] = (v[:, without | (1 << i)] - v[:, without]) @ weight[sizes[without]]
    return Result(phi.numpy(), v[:, -1].numpy(), v[:, 0].numpy())


def kernel_shap(a: Attributable, samples: int = 2048, seed: int = 0) -> Result:
    """KernelSHAP (Lundberg & Lee 2017): regress v(S) - v(empty) on the coalitions, weighted
    by the Shapley kernel, with sum(phi) = v(all) - v(empty) imposed. Every coalition is
    enumerated when there are at most `samples` (then the values are exact Shapley values);
    otherwise coalition sizes are drawn in proportion to the kernel's total weight per size,
    members uniformly, each with its complement."""
    m = len(a.groups)
    if m == 1:
        fx, fb = _ends(a)
        return Result((fx - fb).numpy()[:, None], fx.numpy(), fb.numpy())
    if (1 << m) - 2 <= samples:
        codes = torch.arange(1, (1 << m) - 1)
        keep = ((codes[:, None] >> torch.arange(m)[None, :]) & 1).bool()
        s = keep.sum(1).double()
        w = (m - 1) / (torch.tensor([math.comb(m, int(k)) for k in s], dtype=torch.float64) * s * (m - s))
    else:
        rng = np.random.default_rng(seed)
        sizes = np.arange(1, m)
        p = (m - 1) / (sizes * (m - sizes))
        drawn = rng.choice(sizes, size=samples // 2, p=p / p.sum())
        half = np.zeros((samples // 2, m), dtype=bool)
        for k, size in enumerate(drawn):
            half[k, rng.choice(m, size=size, replace=False)] = True
        keep = torch.from_numpy(np.concatenate([half, ~half]))
        w = torch.ones(len(keep), dtype=torch.float64)
    rows = torch.arange(len(a.inputs))
    v = _coalition_values(a, keep, rows)  # (N, K)
    fx, fb = _ends(a)
    gap = fx - fb
    z = keep.double()
    # phi_last = gap - sum(others): regress y - z_last * gap on z_i - z_last (i < last)
    y = v - fb[:, None] - z[None, :, -1] * gap[:, None]  # (N, K)
    x = z[:, :-1] - z[:, -1:]  # (K, M-1)
    sw = w.sqrt()
    # one design matrix for every row: a single solve, the rows as right-hand sides
    sol = torch.linalg.lstsq(x * sw[:, None], (y * sw[None, :]).T).solution.T  # (N, M-1)
    phi = torch.cat([sol, (gap - sol.sum(1))[:, None]], dim=1)
    return Result(phi.numpy(), fx.numpy(), fb.numpy())


# --------------------------------------------------------------------------- occlusion
def occlusion(a: Attributable) -> Result:
    """f(x) - f(x with one column at the baseline), per column."""
    m = len(a.groups)
    keep = ~torch.eye(m, dtype=torch.bool)  # coalition i: every column but i
    v = _coalition_values(a, keep, torch.arange(len(a.inputs)))
    fx, fb = _ends(a)
    return Result((fx[:, None] - v).numpy(), fx.numpy(), fb.numpy())
