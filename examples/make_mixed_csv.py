"""Write examples/data/mixed.csv: a small churn table with numeric and categorical
columns, some missing incomes, and a label that depends on both kinds of column."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def make(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    city = rng.choice(["beijing", "shanghai", "chengdu", "xian"], n, p=[0.3, 0.3, 0.25, 0.15])
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.35, 0.15])
    age = rng.integers(18, 75, n)
    tenure = rng.integers(1, 72, n)
    calls = rng.poisson(2.0, n)
    income = rng.normal(12_000, 4_000, n).round(0)
    logit = (-1.0 + 0.45 * calls - 0.04 * tenure + 0.02 * (age - 45)
             + np.select([city == "chengdu", city == "xian"], [0.8, -0.6], 0.0)
             + np.select([plan == "basic", plan == "pro"], [0.7, -0.9], 0.0)
             - 0.00005 * (income - 12_000))
    churn = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "churn", "stay")
    income = income.astype(float)
    income[rng.random(n) < 0.03] = np.nan  # gaps for the imputation policy
    return pd.DataFrame({"customer_id": np.arange(100_000, 100_000 + n), "age": age,
                         "income": income, "tenure_months": tenure, "city": city, "plan": plan,
                         "support_calls": calls, "churn": churn})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / "mixed.csv"))
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    make(args.rows).to_csv(args.out, index=False)
    print(f"wrote {args.out}")
