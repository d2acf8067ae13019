"""Write the small files the README's tour uses, into examples/data/:

  rows.csv        3 new rows for the tutorial model (`danlu predict`), with an id column
  more_rows.csv   200 new labelled rows of the tutorial's problem (`danlu evaluate --data`)
  customers.csv   300 customers with an id, a date, a category, numbers and a free-text review
                  (`danlu init csv`), and whether they churned
  reviews.csv     two sentences for the sentiment models (`danlu predict`)

The tutorial's rows are rows of its own data (scikit-learn's make_classification with the
parameters of examples/tutorial.yaml): the generator cannot draw more rows of the same problem,
so some of them were seen in training. They show the commands, not a held-out score: that is
the run's test split, `danlu evaluate RUN`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

WORDS = ["great", "slow", "friendly", "rude", "cheap", "pricey", "clean", "late", "helpful", "broken",
         "fast", "support", "app", "bill", "plan", "service"]


def tutorial_rows(n: int) -> pd.DataFrame:
    """The last n rows of the tutorial's data (its data section, read the way a run reads it),
    features rounded to 3 decimals."""
    from danlu.data.tabular import load_builtin

    config = Path(__file__).resolve().parent / "tutorial.yaml"
    data = yaml.safe_load(config.read_text(encoding="utf-8"))["data"]
    frame, targets = load_builtin(data["source"], data["params"])
    frame = frame.tail(n).reset_index(drop=True)
    features = [c for c in frame.columns if c not in targets]
    frame[features] = frame[features].round(3)
    return frame


def customers(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro"], n)
    age = rng.integers(18, 80, n)
    spend = rng.gamma(4.0, 12.0, n).round(2)
    review = [" ".join(rng.choice(WORDS, rng.integers(5, 12))) for _ in range(n)]
    churned = np.where((spend < 40) ^ (plan == "pro"), "yes", "no")
    return pd.DataFrame(
        {
            "customer_id": rng.permutation(np.arange(1, n + 1)),
            "signup": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
            "plan": plan,
            "age": age,
            "monthly_spend": spend,
            "review": review,
            "churned": churned,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    rows = tutorial_rows(3).drop(columns="target")
    rows.insert(0, "id", [101, 102, 103])
    rows.to_csv(out / "rows.csv", index=False)
    tutorial_rows(200).to_csv(out / "more_rows.csv", index=False)
    frame = customers()
    frame["signup"] = frame["signup"].dt.strftime("%Y-%m-%d")
    frame.to_csv(out / "customers.csv", index=False)
    reviews = ["The battery died after two days.", "Best pizza in town, friendly staff!"]
    pd.DataFrame({"text": reviews}).to_csv(out / "reviews.csv", index=False)
    for name in ("rows.csv", "more_rows.csv", "customers.csv", "reviews.csv"):
        print(os.path.relpath(out / name))


if __name__ == "__main__":
    main()
