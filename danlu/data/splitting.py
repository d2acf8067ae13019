"""scikit-learn's train_test_split without importing scikit-learn.

Importing scikit-learn costs about 1.3 s (it imports SciPy), paid by every run that
splits a table and by every process of a tuning search. This draws the same rows for the
same seed as `train_test_split(index, test_size=f, random_state=seed, stratify=y)`: the
same NumPy RandomState calls in the same order as scikit-learn's ShuffleSplit and
StratifiedShuffleSplit (tests/test_splitting.py compares the two over many sizes,
fractions, seeds and class balances), and ValueErrors with scikit-learn's wording.
"""

from __future__ import annotations

import math

import numpy as np


def train_test_split(
    index: np.ndarray, test_size: float, seed: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) parts of `index`; `test_size` is a fraction in (0, 1)."""
    n = len(index)
    if not 0 < test_size < 1:
        raise ValueError(
            f"test_size={test_size} should be either positive and smaller than the number of samples {n}"
            " or a float in the (0, 1) range"
        )
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    if n_train == 0:
        raise ValueError(
            f"With n_samples={n}, test_size={test_size} and train_size=None, the resulting train set will"
            " be empty. Adjust any of the aforementioned parameters."
        )
    rng = np.random.RandomState(seed)
    if stratify is None:
        order = rng.permutation(n)
        return index[order[n_test : n_test + n_train]], index[order[:n_test]]
    train, test = _stratified(np.asarray(stratify), n_train, n_test, rng)
    return index[train], index[test]


def _stratified(
    y: np.ndarray, n_train: int, n_test: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """StratifiedShuffleSplit's first split: every class in proportion, ties broken at random."""
    if y.dtype.kind in "fcO" and (y != y).any():  # NaN, as scikit-learn's check_array finds it
        raise ValueError("Input y contains NaN.")
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if np.min(class_counts) < 2:
        raise ValueError(
            "The least populated classes in y have only 1 member, which is too few. The minimum number"
            " of groups for any class cannot be less than 2. Classes with too few members are:"
            f" {classes[class_counts < 2].tolist()}"
        )
    if n_train < len(classes):
        raise ValueError(
            f"The train_size = {n_train} should be greater or equal to the number of classes = {len(classes)}"
        )
    if n_test < len(classes):
        raise ValueError(
            f"The test_size = {n_test} should be greater or equal to the number of classes = {len(classes)}"
        )
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        rows = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(rows[: n_i[i]])
        test.extend(rows[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Draws per class: the floor of each class's share, then one more for the largest
    remainders, ties drawn at random (scikit-learn's utils.extmath._approximate_mode)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
