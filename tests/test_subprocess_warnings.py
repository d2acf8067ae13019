"""The CLI tests' subprocesses fail on a DeprecationWarning or FutureWarning attributed to danlu's
own modules, as pytest's filterwarnings does in-process (pyproject), and only on those."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import _danlu_modules, _env

WARN = "import warnings; warnings.warn_explicit('old API', {category}, 'f.py', 1, module={module!r})"


def warn_in_subprocess(category: str, module: str) -> subprocess.CompletedProcess[str]:
    code = WARN.format(category=category, module=module)
    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("category", ["DeprecationWarning", "FutureWarning"])
@pytest.mark.parametrize("module", ["danlu", "danlu.data.tabular", "danlu.tuning.trials", "danlu.cli"])
def test_a_warning_from_danlu_fails_the_subprocess(category, module):
    result = warn_in_subprocess(category, module)
    assert result.returncode != 0 and f"{category}: old API" in result.stderr, result.stderr


@pytest.mark.parametrize("module", ["pandas.core.frame", "torch.nn.modules.module", "danlu_extra", "mydanlu"])
def test_a_warning_from_elsewhere_stays_a_warning(module):
    result = warn_in_subprocess("DeprecationWarning", module)
    assert result.returncode == 0, result.stderr


def test_every_danlu_module_is_named():
    import pkgutil

    import danlu

    found = {m.name for m in pkgutil.walk_packages(danlu.__path__, "danlu.")} | {"danlu"}
    assert found <= set(_danlu_modules())
