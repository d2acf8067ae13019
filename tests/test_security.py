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
from conftest import REPO, _env, cli, make_mixed_frame, small_config

import danlu
from danlu import fileio
from danlu.errors import DanluError
from danlu.lm.cpu import kernels as cpu_kernels

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- tune --jobs workers
@pytest.mark.slow
def test_tune_workers_do_not_import_from_the_working_directory(tmp_path):
    """An optuna.py in the folder `danlu tune --jobs 2` runs in must not be imported by a worker.
    (The parent is started with -P too: `python -m` puts the working directory first for it as
    well, as for any `python -m`; the `danlu` command does not.)"""
    pytest.importorskip("optuna", reason="optuna is not installed (pip install 'danlu[tune]')")
    marker = tmp_path / "marker"
    (tmp_path / "optuna.py").write_text(MARKER_CODE.format(marker=str(marker)), encoding="utf-8")
    body = {
        "name": "t",
        "task": {"type": "classification"},
        "data": {"source": "make_classification", "params": {"n_samples": 120, "n_features": 4}},
        "model": {"hidden": [8]},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
        "eval": {"plots": False},
        "output": {"dir": str(tmp_path / "runs")},
        "tune": {"sampler": "random", "pruner": "none", "trials": 2, "space": {"train.lr": [0.01, 0.1]}},
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-P", "-m", "danlu", "tune", "tune.yaml", "--jobs", "2", "--quiet"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    log = (tmp_path / "runs" / "t-tune" / "workers" / "worker-1.log").read_text(encoding="utf-8")
    assert "Traceback" not in log, log
    rows = (tmp_path / "runs" / "t-tune" / "trials.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3, rows


# --------------------------------------------------------------------------- the compiled CPU kernel
EVIL_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("constructor ran", f); fclose(f); }
}
int danlu_simd(void) { return 1; }
"""


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    """A fresh kernel cache under tmp_path/cache, and cpu_kernels as if never loaded."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DANLU_CPU_KERNELS", raising=False)
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    return tmp_path / "cache" / "danlu" / "kernels"


@pytest.fixture
def planted_library(tmp_path) -> tuple[Path, Path]:
    """A real shared library whose constructor writes tmp_path/marker when it is loaded."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the planted library")
    marker = tmp_path / "marker"
    src = tmp_path / "evil.c"
    src.write_text(EVIL_C, encoding="utf-8")
    lib = tmp_path / "evil.so"
    subprocess.run([cc, "-shared", "-fPIC", f'-DMARKER="{marker}"', str(src), "-o", str(lib)], check=True)
    return lib, marker


def fresh_load() -> bool:
    cpu_kernels._lib, cpu_kernels._tried = None, False
    return cpu_kernels.available()


def test_kernel_cache_folder_is_created_private(kernel_cache, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a compiler that fails: torch does the work, quietly
    assert not cpu_kernels.available()
    assert stat.S_IMODE(kernel_cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(kernel_cache.parent.stat().st_mode) == 0o700  # danlu/ as well


def test_danlu_cache_folders_are_created_private_and_existing_ones_kept(tmp_path, monkeypatch):
    """fileio.make_user_cache: danlu/ and danlu/NAME are made 0700 whatever the umask; the
    cache root above them is not danlu's; a danlu/ the user made with another mode is used
    as it is (never chmod-ed)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = os.umask(0o002)
    try:
        logs = fileio.make_user_cache("logs")
    finally:
        os.umask(old)
    assert logs == tmp_path / "cache" / "danlu" / "logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert stat.S_IMODE(logs.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o775  # the umask's: not danlu's own
    mine = tmp_path / "mine"
    (mine / "danlu").mkdir(parents=True)
    (mine / "danlu").chmod(0o750)
    monkeypatch.setenv("XDG_CACHE_HOME", str(mine))
    assert fileio.make_user_cache("datasets").is_dir()
    assert stat.S_IMODE((mine / "danlu").stat().st_mode) == 0o750
    assert stat.S_IMODE((mine / "danlu" / "datasets").stat().st_mode) == 0o700


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown a folder")
def test_a_danlu_cache_folder_that_is_not_yours_is_refused(tmp_path, monkeypatch, caplog, planted_library):
    """Another user's danlu/ in a shared $XDG_CACHE_HOME: neither written into nor loaded from."""
    lib, marker = planted_library
    shared = tmp_path / "shared-cache"
    kernels = shared / "danlu" / "kernels"
    kernels.mkdir(parents=True, mode=0o700)
    shutil.copy(lib, kernels / cpu_kernels._kernel_name("false"))
    (kernels / cpu_kernels._kernel_name("false")).chmod(0o700)
    os.chown(shared / "danlu", 65534, 65534)  # nobody's
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    with pytest.raises(PermissionError, match="not yours"):
        fileio.make_user_cache("logs")
    assert not (shared / "danlu" / "logs").exists()
    monkeypatch.setenv("CC", "false")
    monkeypatch.delenv("DANLU_CPU_KERNELS", raising=False)
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    assert not cpu_kernels.available() and not marker.exists()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "danlu.lm.cpu.kernels"]
    assert str(shared / "danlu") in line and "not yours" in line and "torch does the work" in line


@pytest.mark.parametrize("how", ["symlink", "group_writable"])
def test_planted_kernel_is_never_loaded(kernel_cache, planted_library, monkeypatch, caplog, how):
    """A .so at the exact cache name, reached through a symbolic link or writable by the group:
    refused (its constructor never runs), and with no working compiler torch does the work."""
    lib, marker = planted_library
    monkeypatch.setenv("CC", "false")
    kernel_cache.mkdir(parents=True, mode=0o700)
    target = kernel_cache / cpu_kernels._kernel_name("false")
    if how == "symlink":
        target.symlink_to(lib)
    else:
        shutil.copy(lib, target)
        target.chmod(0o775)
    assert not fresh_load()
    assert not marker.exists()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "danlu.lm.cpu.kernels"]
    assert str(target) in line and "building it anew" in line


@pytest.mark.parametrize("how", ["symlinked_folder", "group_writable_folder"])
def test_unsafe_kernel_folder_falls_back_to_torch(kernel_cache, planted_library, monkeypatch, caplog, how):
    lib, marker = planted_library
    monkeypatch.setenv("CC", "false")
    elsewhere = kernel_cache.parent / "elsewhere"
    elsewhere.mkdir(parents=True, mode=0o700)
    shutil.copy(lib, elsewhere / cpu_kernels._kernel_name("false"))
    if how == "symlinked_folder":
        kernel_cache.symlink_to(elsewhere)
    else:
        elsewhere.rename(kernel_cache)
        kernel_cache.chmod(0o770)
    assert not fresh_load()
    assert not marker.exists()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "danlu.lm.cpu.kernels"]
    assert str(kernel_cache) in line and "torch does the work" in line


def test_refused_kernel_is_rebuilt_and_the_cache_then_reused(kernel_cache, planted_library, monkeypatch):
    """With a working compiler the refused file is replaced by a fresh build (0700, the real
    kernel), which the next process loads from the cache without compiling."""
    lib, marker = planted_library
    compiler = shutil.which("cc") or shutil.which("gcc")
    monkeypatch.setenv("CC", compiler)
    kernel_cache.mkdir(parents=True, mode=0o700)
    target = kernel_cache / cpu_kernels._kernel_name(compiler)
    shutil.copy(lib, target)
    target.chmod(0o666)
    built = fresh_load()
    assert not marker.exists()
    st = target.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert target.read_bytes() != lib.read_bytes()
    assert [p.name for p in kernel_cache.iterdir()] == [target.name]  # no temporary file left
    if not built:
        pytest.skip("the kernel was rebuilt but this CPU lacks AVX2/FMA: nothing more to load")
    assert fresh_load() and target.lstat().st_ino == st.st_ino  # loaded from the cache as it was


# --------------------------------------------------------------------------- transformers' remote code
LOADERS = ("from_pretrained", "from_config")


def test_every_transformers_loader_says_whether_to_trust_remote_code():
    """Every from_pretrained / from_config / pipeline call in danlu passes trust_remote_code
    explicitly: left out, transformers asks on stdin whether to run a folder's own code."""
    calls, missing = 0, []
    for path in sorted((REPO / "danlu").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in LOADERS or name == "pipeline":
                calls += 1
                if not any(k.arg == "trust_remote_code" for k in node.keywords):
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert calls >= 10  # the walk found danlu's loaders
    assert not missing, missing


def remote_code_folder(folder: Path, marker: Path, model_type: str) -> Path:
    """A tiny Wav2Vec2ForCTC folder whose config.json maps its classes to a modeling file in
    the folder that writes `marker` when imported."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from asr_models import make_wav2vec2
    finally:
        sys.path.pop(0)
    make_wav2vec2(folder)
    (folder / "modeling_planted.py").write_text(
        MARKER_CODE.format(marker=str(marker))
        + "from transformers import Wav2Vec2Config, Wav2Vec2ForCTC\n"
        + f"class PlantedConfig(Wav2Vec2Config):\n    model_type = {model_type!r}\n"
        + "class PlantedForCTC(Wav2Vec2ForCTC):\n    config_class = PlantedConfig\n",
        encoding="utf-8",
    )
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "modeling_planted.PlantedConfig",
        "AutoModelForCTC": "modeling_planted.PlantedForCTC",
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def danlu_with_stdin(args: list, cwd: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    env = _env({"HF_HOME": str(cwd / "hf-home"), "HF_HUB_OFFLINE": "1"})
    return subprocess.run(
        [sys.executable, "-m", "danlu", *map(str, args)],
        cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_remote_code_speech_folder_runs_nothing_without_the_flag(tmp_path):
    """transcribe and evaluate --manifest on a folder that needs its own code: one line, exit 2,
    nothing run, nothing read from stdin (a 'y' there would have run it); with the flag it runs."""
    pytest.importorskip("transformers")
    sf = pytest.importorskip("soundfile")
    sys.path.insert(0, str(Path(__file__).parent))
    from asr_models import noise_speech

    sys.path.pop(0)
    marker = tmp_path / "marker"
    folder = remote_code_folder(tmp_path / "planted", marker, "planted-w2v")
    sf.write(tmp_path / "a.wav", noise_speech(1.0), 16000, subtype="PCM_16")
    (tmp_path / "m.csv").write_text("audio,text\na.wav,hello\n", encoding="utf-8")
    expected = (
        f"'{folder}' needs its own Python code to load (auto_map in its config);"
        " pass --trust-remote-code only if you trust this folder"
    )
    result = danlu_with_stdin(["transcribe", folder, "a.wav"], tmp_path, "y\n")
    assert one_line_error(result) == expected
    assert not marker.exists()
    result = danlu_with_stdin(["evaluate", folder, "--manifest", "m.csv"], tmp_path, "y\n")
    assert one_line_error(result) == expected
    assert not marker.exists()

    trusted = danlu_with_stdin(["transcribe", folder, "a.wav", "--trust-remote-code"], tmp_path, "")
    assert marker.read_text() == "code ran", trusted.stderr


@pytest.mark.slow
def test_remote_code_map_on_a_known_architecture_loads_the_built_in_class(tmp_path):
    """model_type wav2vec2 with an auto_map: transformers' own Wav2Vec2ForCTC, the map ignored."""
    pytest.importorskip("transformers")
    sf = pytest.importorskip("soundfile")
    sys.path.insert(0, str(Path(__file__).parent))
    from asr_models import noise_speech

    sys.path.pop(0)
    marker = tmp_path / "marker"
    folder = remote_code_folder(tmp_path / "planted", marker, "wav2vec2")
    sf.write(tmp_path / "a.wav", noise_speech(1.0), 16000, subtype="PCM_16")
    result = danlu_with_stdin(["transcribe", folder, "a.wav"], tmp_path, "y\n")
    assert result.returncode == 0, result.stderr
    assert not marker.exists()


def test_wav2vec2_ctc_model_path_with_remote_code_is_one_line(tmp_path):
    """model.type wav2vec2_ctc (training, and a run's hf/ folder when it is loaded) never runs
    the folder's code: a one-line error instead of transformers' prompt or traceback."""
    pytest.importorskip("transformers")
    from danlu.config import parse_model
    from danlu.speech.model import Wav2Vec2CTC

    marker = tmp_path / "marker"
    folder = remote_code_folder(tmp_path / "planted", marker, "planted-w2v")
    with pytest.raises(DanluError) as e:
        Wav2Vec2CTC(parse_model({"type": "wav2vec2_ctc", "path": str(folder)}), None, 8)
    assert str(e.value) == (
        f"model.path: '{folder}' needs its own Python code to load (auto_map in config.json);"
        " wav2vec2_ctc runs only the architectures transformers ships (Wav2Vec2, HuBERT, WavLM)"
    )
    assert not marker.exists()


# --------------------------------------------------------------------------- tune --resume of a saved study
@pytest.mark.slow
def test_saved_study_names_user_code_only_with_trust_code(tmp_path, user_code_dir):
    """`danlu tune STUDY --resume` continues a study from its folder's study.yaml, which someone
    else may have written: user code it names is refused in one line until --trust-code."""
    pytest.importorskip("optuna", reason="optuna is not installed (pip install 'danlu[tune]')")
    csv = tmp_path / "mixed.csv"
    make_mixed_frame(60).to_csv(csv, index=False)
    body = {
        "data": {"path": str(csv), "target": "label"},
        "model": {"type": "mymodels:TinyNet", "params": {"hidden": 8}},
        "train": {"epochs": 1},
        "tune": {"sampler": "random", "pruner": "none", "trials": 1, "space": {"train.lr": [0.01, 0.1]}},
    }
    config = tmp_path / "user.yaml"
    config.write_text(
        yaml.safe_dump(small_config(body, tmp_path / "runs"), sort_keys=False), encoding="utf-8"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(user_code_dir)])}
    first = cli("tune", config, "--quiet", cwd=tmp_path, env=env)  # the user's own YAML: their code runs
    assert first.returncode == 0, first.stderr
    study = tmp_path / "runs" / "t-tune"
    assert (study / "study.yaml").is_file() and (study / "study.json").is_file()
    # the folder now comes from someone else: importing mymodels would run it
    marker = tmp_path / "imported"
    (user_code_dir / "mymodels.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n" + USER_CODE, encoding="utf-8"
    )
    for ref in (study, study / "study.yaml"):
        refused = cli("tune", ref, "--resume", "--trials", "2", "--quiet", cwd=tmp_path, env=env)
        assert one_line_error(refused) == (
            f"{study / 'study.yaml'}: model.type 'mymodels:TinyNet' names code, not a registered danlu"
            " name; load it only if you trust this folder: --trust-code"
        )
        assert not marker.exists()
    jobs = cli("tune", study, "--resume", "--trials", "3", "--jobs", "2", "--quiet", cwd=tmp_path, env=env)
    assert one_line_error(jobs).endswith("--trust-code") and not marker.exists()
    ok = cli("tune", study, "--resume", "--trials", "2", "--trust-code", "--quiet", cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert marker.exists()
    rows = (study / "trials.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3, rows  # header + the first trial + the one run now
