"""Loading never runs code it was not asked to (issue 14, Security): each attack tried end to end.

- a run folder whose model.json names code (`torch.hub:load` on its own hubconf.py);
- user code in a saved run loads only with --trust-code / trust_code=True;
- the compiled CPU kernel's cache: folder 0700, no symlinks, no group-writable .so;
- `tune --jobs` workers never import from the working directory;
- transformers loaders never run a model folder's own code without --trust-remote-code.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli, make_mixed_frame, small_config

import danlu
from danlu import cpu_kernels
from danlu.errors import DanluError

MARKER_CODE = "open({marker!r}, 'w').write('code ran')\n"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


# --------------------------------------------------------------------------- model.json names code
def plant_hub_model(run: Path, marker: Path) -> None:
    """The attack of the issue: model.json's model.type is torch.hub:load on the folder's hubconf.py."""
    (run / "hubconf.py").write_text(
        MARKER_CODE.format(marker=str(marker)) + "def evil(**kwargs):\n    raise SystemExit(0)\n",
        encoding="utf-8",
    )
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    meta["model"] = {
        "type": "torch.hub:load",
        "params": {"repo_or_dir": str(run), "source": "local", "model": "evil"},
    }
    (run / "model.json").write_text(json.dumps(meta), encoding="utf-8")


def test_planted_model_json_does_not_run_its_code(mixed_run, tmp_path):
    run = tmp_path / "shared-run"
    shutil.copytree(mixed_run.run, run)
    marker = tmp_path / "marker"
    plant_hub_model(run, marker)

    expected = (
        f"{run / 'model.json'}: model.type 'torch.hub:load' is not a registered danlu model;"
        " load it only if you trust this folder: --trust-code"
    )
    result = cli("predict", run, "--input", mixed_run.csv, cwd=tmp_path)
    assert one_line_error(result) == expected
    assert not marker.exists()
    assert one_line_error(cli("evaluate", run, cwd=tmp_path)) == expected
    assert not marker.exists()
    with pytest.raises(DanluError) as e:
        danlu.load(run)
    assert str(e.value) == expected
    assert not marker.exists()

    # asked for: the folder's code is imported (here it ends the process at once)
    trusted = cli("predict", run, "--input", mixed_run.csv, "--trust-code", cwd=tmp_path)
    assert "not a registered" not in trusted.stderr
    assert marker.read_text() == "code ran"


def test_planted_loss_in_model_json_is_refused(mixed_run, tmp_path):
    run = tmp_path / "shared-run"
    shutil.copytree(mixed_run.run, run)
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    meta["task"]["loss"] = "os:system"
    (run / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    message = one_line_error(cli("predict", run, "--input", mixed_run.csv, cwd=tmp_path))
    assert message == (
        f"{run / 'model.json'}: task.loss 'os:system' is not a registered danlu loss;"
        " load it only if you trust this folder: --trust-code"
    )


USER_CODE = '''
"""A user's own model and metric, importable from PYTHONPATH."""
import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, schema, out_dim, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(schema.n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x, x_cat=None):
        return self.net(x)


def top_share(y_true, output):
    return float(np.mean(np.asarray(output).argmax(axis=1) == 0))
'''


@pytest.fixture
def user_code_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mycode"
    folder.mkdir()
    (folder / "mymodels.py").write_text(USER_CODE, encoding="utf-8")
    return folder


def train_user_run(tmp_path: Path, user_code_dir: Path, body: dict) -> tuple[Path, Path, dict[str, str]]:
    csv = tmp_path / "mixed.csv"
    make_mixed_frame(60).to_csv(csv, index=False)
    base = {"data": {"path": str(csv), "target": "label"}, "train": {"epochs": 1}}
    config = tmp_path / "user.yaml"
    cfg = small_config({**base, **body}, tmp_path / "runs")
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(user_code_dir)])}
    result = cli("train", config, cwd=tmp_path, env=env)  # the user's own YAML: their code runs
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    return run, csv, env


def test_user_model_needs_trust_code_to_load_from_its_run(tmp_path, user_code_dir):
    body = {"model": {"type": "mymodels:TinyNet", "params": {"hidden": 8}}}
    run, csv, env = train_user_run(tmp_path, user_code_dir, body)
    refusal = (
        f"{run / 'model.json'}: model.type 'mymodels:TinyNet' is not a registered danlu model;"
        " load it only if you trust this folder: --trust-code"
    )
    assert one_line_error(cli("predict", run, "--input", csv, cwd=tmp_path, env=env)) == refusal
    assert one_line_error(cli("evaluate", run, cwd=tmp_path, env=env)) == refusal
    resumed = one_line_error(cli("train", "--resume", run, cwd=tmp_path, env=env))
    assert resumed == (
        f"{run / 'config.yaml'}: model.type 'mymodels:TinyNet' is not a registered danlu model;"
        " load it only if you trust this folder: --trust-code"
    )

    out = tmp_path / "pred.csv"
    ok = cli("predict", run, "--input", csv, "--output", out, "--trust-code", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert len(out.read_text().splitlines()) == 61
    ok = cli("evaluate", run, "--trust-code", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    ok = cli("train", "--resume", run, "--trust-code", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr

    sys.path.insert(0, str(user_code_dir))
    try:
        with pytest.raises(DanluError, match="not a registered danlu model"):
            danlu.load(run)
        assert len(danlu.load(run, trust_code=True).predict(make_mixed_frame(5))) == 5
    finally:
        sys.path.remove(str(user_code_dir))
        sys.modules.pop("mymodels", None)


def test_user_metric_in_saved_config_needs_trust_code(tmp_path, user_code_dir):
    """A built-in model with a user metric: predicting needs no code, evaluating does."""
    body = {"model": {"hidden": [8]}, "eval": {"plots": False, "metrics": ["mymodels:top_share"]}}
    run, csv, env = train_user_run(tmp_path, user_code_dir, body)
    assert cli("predict", run, "--input", csv, cwd=tmp_path, env=env).returncode == 0
    assert one_line_error(cli("evaluate", run, cwd=tmp_path, env=env)) == (
        f"{run / 'config.yaml'}: eval.metrics 'mymodels:top_share' is not a registered danlu metric;"
        " load it only if you trust this folder: --trust-code"
    )
    ok = cli("evaluate", run, "--trust-code", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "top_share" in json.loads((run / "metrics.json").read_text())["metrics"]
