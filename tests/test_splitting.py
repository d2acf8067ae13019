"""Row splits and built-in datasets without scikit-learn: the same rows and the same data
as scikit-learn gives, and a run that does not import it (it costs every run and every
tuning process about 1.3 s)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import _env
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split as sk_split

from danlu.data import dataset_cache
from danlu.data.splitting import train_test_split
from danlu.data.tabular import load_builtin


def _labels(rng: np.random.Generator, kind: int, n: int) -> np.ndarray | None:
    if kind == 0:
        return None
    if kind == 1:  # integers, a few classes
        return rng.integers(0, int(rng.integers(2, 8)), size=n)
    if kind == 2:  # strings with skewed classes: ties and rare classes in _approximate_mode
        p = rng.dirichlet(np.full(5, 0.3))
        return np.asarray(list("abcde"), dtype=object)[rng.choice(5, size=n, p=p)]
    return (rng.random(n) < 0.3).astype(float)


def test_split_is_sklearns_train_test_split() -> None:
    rng = np.random.default_rng(0)
    compared = failed = 0
    for case in range(600):
        n = int(rng.integers(2, 300))
        frac = float(rng.choice([0.1, 0.125, 0.2, 0.25, 1 / 3, 0.5, 0.9, rng.uniform(0.01, 0.99)]))
        seed = int(rng.integers(0, 2**31 - 1))
        index = np.sort(rng.choice(10 * n, size=n, replace=False))
        y = _labels(rng, case % 4, n)
        try:
            want: list[np.ndarray] | str = sk_split(index, test_size=frac, random_state=seed, stratify=y)
        except ValueError as e:
            want = str(e)
        try:
            got: tuple[np.ndarray, np.ndarray] | str = train_test_split(index, frac, seed, stratify=y)
        except ValueError as e:
            got = str(e)
        if isinstance(want, str) or isinstance(got, str):
            assert got == want, (n, frac, seed, case % 4)  # too few rows (of a class): the same words
            failed += 1
            continue
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b), (n, frac, seed, case % 4)
        compared += 1
    assert compared > 450 and failed > 10  # both paths were exercised


BUILTINS = [
    ("make_classification", {"n_samples": 300, "n_features": 6, "n_informative": 3, "random_state": 42}),
    ("make_regression", {"n_samples": 50, "n_targets": 2, "random_state": 1}),
    ("iris", {}),
    ("linnerud", {}),
]


@pytest.mark.parametrize(("name", "params"), BUILTINS)
def test_cached_builtin_is_sklearns_data(
    name: str, params: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if name.startswith("make_"):
        x, y = getattr(skd, name)(**params)[:2]
        classes: list = []
    else:
        bunch = getattr(skd, f"load_{name}")()
        x, y, classes = bunch.data, bunch.target, list(getattr(bunch, "target_names", []))
    frames = [load_builtin(name, params) for _ in range(2)]  # made, then read from the cache
    assert len(list((tmp_path / "danlu" / "datasets").glob(f"{name}-*.npz"))) == 1
    for df, targets in frames:
        features = [c for c in df.columns if c not in targets]
        assert df[features].to_numpy().tobytes() == np.asarray(x).tobytes()
        if name == "iris":  # the dataset's own class names, as str
            assert list(df["target"]) == list(np.asarray(classes, dtype=object)[y])
        else:
            assert df[targets].to_numpy().reshape(np.shape(y)).tobytes() == np.asarray(y).tobytes()
    pd.testing.assert_frame_equal(frames[0][0], frames[1][0], check_exact=True)


def test_random_generator_and_other_versions_are_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a, _ = load_builtin("make_moons", {"n_samples": 40})  # no random_state: new data every call
    b, _ = load_builtin("make_moons", {"n_samples": 40})
    assert not a.equals(b) and not (tmp_path / "danlu" / "datasets").exists()
    params = {"n_samples": 40, "random_state": 0}
    path = dataset_cache._path("make_moons", params)
    monkeypatch.setattr(np, "__version__", "0.0")  # another NumPy: another file
    assert path is not None and dataset_cache._path("make_moons", params) != path


def test_unusable_cache_falls_back_to_sklearn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # nothing can be written under it
    params = {"n_samples": 30, "noise": 0.1, "random_state": 3}
    x, y = skd.make_moons(**params)
    df, _ = load_builtin("make_moons", params)
    assert df[["x0", "x1"]].to_numpy().tobytes() == x.tobytes() and (df["target"] == y).all()


@pytest.mark.slow
def test_tabular_run_needs_no_sklearn(tmp_path: Path) -> None:
    """A run on a file, and a run on a built-in dataset once it is cached, never import
    scikit-learn."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    df["label"] = np.where(df.a - df.b > 0, "yes", "no")
    df.to_csv(tmp_path / "d.csv", index=False)
    base = {"train": {"epochs": 2, "lr": 0.01}, "eval": {"plots": False}, "output": {"dir": str(tmp_path)}}
    csv = {**base, "name": "csv", "data": {"path": str(tmp_path / "d.csv"), "target": "label"}}
    builtin = {
        **base,
        "name": "builtin",
        "data": {"source": "make_classification", "params": {"n_samples": 200, "random_state": 5}},
    }
    script = textwrap.dedent(
        """
        import json, sys
        import danlu
        danlu.train(json.loads(sys.argv[1]), progress="quiet")
        print(json.dumps({"sklearn": "sklearn" in sys.modules}))
        """
    )

    def train(cfg: dict) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", script, json.dumps(cfg)],
            cwd=tmp_path,
            env=_env({"XDG_CACHE_HOME": str(tmp_path / "cache")}),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert train(csv)["sklearn"] is False
    assert train(builtin)["sklearn"] is True  # made by scikit-learn, then cached
    assert train(builtin)["sklearn"] is False
