"""scikit-learn's built-in datasets kept on disk, so that a run reads arrays instead of
importing scikit-learn (about 1.3 s with SciPy; every run of the tutorial and every
process of a tuning search paid it).

A dataset is cached when it comes out the same every time: a bundled table (iris, wine,
...) or a generator given an integer `random_state`. The key is the name, the parameters
and the scikit-learn and NumPy versions, so an upgrade makes a fresh copy. The files are
.npz arrays read without pickle, under $XDG_CACHE_HOME/danlu/datasets (~/.cache/danlu/
datasets), written atomically: processes starting together may each write one, never half
of one. A cache that cannot be read or written is skipped: the data then comes from
scikit-learn as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from danlu import fileio
from danlu.errors import DanluError

log = logging.getLogger(__name__)

# x, y, feature names, target names: what load_builtin takes from scikit-learn
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load(name: str, params: dict[str, Any], make: Callable[[], Arrays]) -> Arrays:
    """The dataset from the cache, or from `make()` (then written to the cache)."""
    path = _path(name, params)
    if path is None:
        return make()
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["x"], f["y"], f["feature_names"], f["target_names"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError) as e:  # unreadable: make it again
        log.debug("dataset cache %s not read (%s)", path, e)
    arrays = make()
    if any(a.dtype == object for a in arrays):
        return arrays  # read back only with pickle: not cached
    try:
        fileio.make_user_cache("datasets")  # 0700 where danlu creates it; refused when not ours
        with fileio.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **dict(zip(("x", "y", "feature_names", "target_names"), arrays, strict=True)))
    except (OSError, ValueError, DanluError) as e:  # a read-only home, a file in the way, ...
        log.debug("dataset cache %s not written (%s)", path, e)
    return arrays


def _path(name: str, params: dict[str, Any]) -> Path | None:
    """Where the dataset is cached; None when it is drawn afresh on every call."""
    if name.startswith("make_") and not isinstance(params.get("random_state"), int):
        return None
    from importlib import metadata

    try:
        sklearn = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return None  # making it says what to install
    key = json.dumps(
        {"name": name, "params": params, "sklearn": sklearn, "numpy": np.__version__},
        sort_keys=True,
        default=str,
    )
    return fileio.user_cache("datasets") / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
