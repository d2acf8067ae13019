"""An exception danlu did not expect (not a DanluError) is a bug: one line saying so and
where the traceback was written, exit code 1; with --debug the traceback itself."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

PLUGIN = '''
import torch
from torch import nn


class Broken(nn.Module):
    """A user model whose forward pass fails as a bug in a library would."""

    def __init__(self, schema, out_dim):
        super().__init__()
        self.layer = nn.Linear(4, out_dim)  # iris: 4 features

    def forward(self, x):
        raise RuntimeError("boom in forward")
'''


def broken_config(tmp_path: Path, write_config) -> tuple[Path, dict[str, str]]:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "brokenmodel.py").write_text(PLUGIN, encoding="utf-8")
    cfg = write_config({"data": {"source": "iris"}, "model": {"type": "brokenmodel:Broken"}})
    pythonpath = os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": pythonpath, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return cfg, env


@pytest.mark.slow
def test_unexpected_exception_is_one_line_and_a_log(run_cli, write_config, tmp_path):
    cfg, env = broken_config(tmp_path, write_config)
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).resolve().parents[1])
    r = run_cli("train", cfg, env=env)
    assert r.returncode == 1, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: internal error (RuntimeError: boom in forward)") and "bug" in line, line
    assert "Traceback" not in r.stderr
    log = Path(re.search(r"the traceback is in (\S+)", line).group(1))
    assert log.parent == tmp_path / "cache" / "danlu" / "logs" and log.name.startswith("danlu-crash-")
    text = log.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and "boom in forward" in text
    assert "brokenmodel.py" in text and "train" in text.splitlines()[1]  # the command line


@pytest.mark.slow
def test_unwritable_cache_logs_to_the_temp_folder(run_cli, write_config, tmp_path):
    cfg, env = broken_config(tmp_path, write_config)
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).resolve().parents[1])
    (tmp_path / "cache").write_text("a file, not a folder")
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    r = run_cli("train", cfg, env=env)
    assert r.returncode == 1, r.stderr
    (log,) = (tmp_path / "tmp").glob("danlu-crash-*.log")
    assert str(log) in r.stderr and "boom in forward" in log.read_text(encoding="utf-8")


@pytest.mark.slow
def test_debug_shows_the_traceback(run_cli, write_config, tmp_path):
    cfg, env = broken_config(tmp_path, write_config)
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).resolve().parents[1])
    r = run_cli("train", cfg, "--debug", env=env)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "boom in forward" in r.stderr
    assert not (tmp_path / "cache" / "danlu" / "logs").exists()
