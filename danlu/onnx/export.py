"""`danlu export RUN --format onnx OUT`: the run's exportable forward (its kind's
`export_onnx` hook, danlu/kinds.py) -> OUT/model.onnx, checked by onnx's checker and against
eager PyTorch on the run's own test split before anything is kept.

OUT is a folder: model.onnx, metadata.json (opset, exporter, inputs and outputs with their
shapes, labels, the preprocessing outside and inside the graph, the parity figures and a
timing of both runtimes) and the files the preprocessing needs (tokenizer.json). It is built
in a temporary folder beside OUT and renamed into place, so a failed export leaves nothing.

Parity: onnxruntime's outputs must be within ATOL + RTOL * |PyTorch| of eager PyTorch's on
every sample batch, and the predicted labels identical; otherwise the export fails naming the
largest difference.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu import fileio, kinds
from danlu.errors import DanluError, one_line
from danlu.onnx.graph import Graph
from danlu.onnx.runtime import session, weights_hash
from danlu.run import RunDir

OPSET = 18
ATOL, RTOL = 1e-5, 1e-4
FORMAT = "danlu-onnx"  # metadata.json's "format": what --force may replace
# tried in order until one's graph passes the checks; dynamo takes seconds where TorchScript's
# tracer takes a fraction of one, so the inner-loop tests try TorchScript's alone
EXPORTERS = ("dynamo", "TorchScript")


def export_onnx(
    run_dir: str | Path, out_dir: str | Path, force: bool = False, trust_code: bool = False
) -> Path:
    run = RunDir.open(run_dir)
    out = Path(out_dir)
    check_out(out, force)
    meta = run.read_model_json()
    kind = kinds.of_run(meta, run.model_json, trust_code)
    if kind.export_onnx is None:
        raise DanluError(
            f"{run.path}: a '{kind.name}' run cannot be exported to ONNX: its kind gives no exportable"
            " forward (tables, images, text, multimodal rows, GPT language models and CTC speech models do)"
        )
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise DanluError(
            "--format onnx needs onnx, onnxscript and onnxruntime: pip install 'danlu[onnx]'"
        ) from None
    graph: Graph = kind.hook("export_onnx")(run.path, trust_code)
    # inference mode throughout: a wrapper made in training mode would put dropout back
    # (TorchScript's exporter restores the mode it found, recursively, after exporting)
    for module in (graph.module, graph.reference):
        if module is not None:
            module.eval()
    model_type = (meta.get("model") or {}).get("type", "?")
    out.parent.mkdir(parents=True, exist_ok=True)
    # ".*.tmp": what a killed export leaves is removed like any partial write (RunDir.clean_partial)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        path = tmp / "model.onnx"
        # the dynamo exporter first; TorchScript's where dynamo cannot export the model or
        # its graph fails the checks (a parity failure is the more telling error of the two)
        failures: list[str] = []
        for exporter in EXPORTERS:
            try:
                export_graph(graph, path, model_type, dynamo=exporter == "dynamo")
                try:
                    onnx.checker.check_model(str(path), full_check=True)
                except Exception as e:  # onnx raises its own ValidationError, and others
                    raise DanluError(
                        f"the exported {model_type} graph fails onnx's checker: {one_line(e)}"
                    ) from None
                sess = session(path)
                parity = check_parity(graph, sess, model_type)
                break
            except DanluError as e:
                failures.append(str(e))
                for leftover in tmp.glob("model.onnx*"):
                    leftover.unlink()
        else:
            raise DanluError(next((f for f in failures if f.startswith("ONNX parity")), failures[-1]))
        timing = time_both(graph, sess)
        for name, src in graph.files.items():
            shutil.copyfile(src, tmp / name)
        proto = onnx.load(str(path), load_external_data=False)
        fileio.write_json(
            tmp / "metadata.json",
            {
                "format": FORMAT,
                "run": str(run.path.resolve()),
                "weights_sha256": weights_hash(run),
                "kind": kind.name,
                "model": model_type,
                **graph.about,
                "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                "exporter": f"torch.onnx.export ({exporter})",
                "dynamo_failed": failures[0] if failures else None,  # why TorchScript's was used
                "versions": {
                    "torch": torch.__version__,
                    "onnx": onnx.__version__,
                    "onnxruntime": onnxruntime.__version__,
                },
                "inputs": [value_info(v) for v in proto.graph.input],
                "outputs": [value_info(v) for v in proto.graph.output],
                "labels": graph.labels,
                "preprocessing": graph.preprocessing,
                "files": sorted(graph.files),
                "parity": parity,
                "timing": timing,
                "faster": "onnxruntime" if timing["onnxruntime_ms"] < timing["torch_ms"] else "torch",
            },
        )
        os.chmod(tmp, 0o777 & ~fileio._umask())  # mkdtemp made it 0700; a folder mkdir would make
        replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_out(out: Path, force: bool) -> None:
    """OUT must be new; --force replaces an earlier ONNX export (or an empty folder), never
    anything else (a run folder, a file)."""
    if not out.exists():
        return
    if not force:
        raise DanluError(f"{out}: already exists; add --force to replace it")
    if out.is_dir() and not any(out.iterdir()):
        return
    try:
        ours = json.loads((out / "metadata.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise DanluError(
            f"{out}: exists and is not an ONNX export of danlu (no metadata.json of one);"
            " --force replaces only those: choose a new folder"
        )


def replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an earlier export is swapped out, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}.tmp")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        fileio.remove(old)


def export_graph(graph: Graph, path: Path, model_type: str, dynamo: bool) -> None:
    """torch.onnx.export with the dynamo exporter (or TorchScript's), traced on the first
    sample batch (doubled to at least 2 rows: a batch of 1 would fix the batch axis)."""
    first = graph.sample[0]
    if len(next(iter(first.values()))) < 2:
        first = {k: np.concatenate([v, v]) for k, v in first.items()}
    args = tuple(torch.from_numpy(np.ascontiguousarray(first[n])) for n in graph.inputs)
    if dynamo:
        # the axes as dynamic_shapes, laid out like the forward's parameters (one tuple for a
        # forward(*tensors)); named axes are kept as the ONNX dimension names
        shapes = tuple(graph.dynamic_axes.get(n) for n in graph.inputs)
        params = list(inspect.signature(graph.module.forward).parameters.values())
        varargs = len(params) == 1 and params[0].kind is inspect.Parameter.VAR_POSITIONAL
        axes: dict[str, Any] = {
            "dynamic_shapes": {params[0].name: shapes} if varargs else shapes,
            "external_data": False,
            "verbose": False,
        }
    else:
        axes = {"dynamic_axes": graph.dynamic_axes}
    quiet = logging.getLogger("torch.onnx")  # its notes (e.g. "torchvision is not installed") on stderr
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph.module,
                args,
                str(path),
                input_names=graph.inputs,
                output_names=graph.outputs,
                opset_version=OPSET,
                dynamo=dynamo,
                **axes,
            )
    except Exception as e:  # each exporter has its own errors
        why = re.sub(r"\x1b\[[0-9;]*m", "", one_line(e, 240))  # dynamo's messages hold terminal colours
        raise DanluError(f"cannot export this {model_type} model to ONNX: {why}") from None
    finally:
        quiet.setLevel(level)


def check_parity(graph: Graph, sess: Any, model_type: str) -> dict[str, Any]:
    """onnxruntime vs eager PyTorch on every sample batch -> the figures for metadata.json;
    a DanluError naming the largest difference when they disagree."""
    worst: tuple[float, str, float, float] = (
        -np.inf,
        "",
        0.0,
        0.0,
    )  # excess over tolerance, where, got, want
    max_abs = max_rel = 0.0
    same = total = rows = 0
    for batch in graph.sample:
        feeds = {n: batch[n] for n in graph.inputs}
        got = sess.run(graph.outputs, feeds)
        with torch.no_grad():
            eager = graph.reference or graph.module
            want = eager(*(torch.from_numpy(np.ascontiguousarray(batch[n])) for n in graph.inputs))
        want = [w.numpy() for w in (want if isinstance(want, tuple | list) else (want,))]
        rows += len(want[0])
        for name, g, w in zip(graph.outputs, got, want, strict=True):
            if g.shape != w.shape:
                raise DanluError(
                    f"ONNX parity: output '{name}' has shape {list(g.shape)} in onnxruntime but"
                    f" {list(w.shape)} in PyTorch; nothing was written"
                )
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
            if diff.size == 0:
                continue
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(w), 1e-12)).max()))
            excess = diff - (ATOL + RTOL * np.abs(w))
            i = np.unravel_index(int(np.argmax(excess)), excess.shape)
            if excess[i] > worst[0]:
                worst = (float(excess[i]), f"{name}{list(map(int, i))}", float(g[i]), float(w[i]))
        if graph.predicted is not None:
            a, b = graph.predicted(got[0]), graph.predicted(want[0])
            same += int((a == b).sum())
            total += a.size
    if worst[0] > 0:
        raise DanluError(
            f"ONNX parity failed for this {model_type} model: largest difference at {worst[1]}:"
            f" onnxruntime {worst[2]:.7g} vs PyTorch {worst[3]:.7g}"
            f" (allowed {ATOL:g} + {RTOL:g} x |PyTorch|); nothing was written"
        )
    if same != total:
        raise DanluError(
            f"ONNX parity failed for this {model_type} model: {total - same} of {total} predicted labels"
            " differ between onnxruntime and PyTorch; nothing was written"
        )
    return {
        "checked_on": graph.sample_from,
        "rows": rows,
        "atol": ATOL,
        "rtol": RTOL,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "labels_identical": 1.0 if total else None,
    }


def time_both(graph: Graph, sess: Any, repeat: int = 3) -> dict[str, Any]:
    """The best of `repeat` passes over the sample batches in each runtime, same threads:
    what `danlu predict --runtime auto` goes by (one measurement, on this machine)."""
    feeds = [{n: b[n] for n in graph.inputs} for b in graph.sample]
    tensors = [
        tuple(torch.from_numpy(np.ascontiguousarray(b[n])) for n in graph.inputs) for b in graph.sample
    ]

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) * 1000

    def eager() -> None:
        with torch.no_grad():
            for t in tensors:
                graph.module(*t)

    def ort() -> None:
        for f in feeds:
            sess.run(graph.outputs, f)

    return {
        "rows": sum(len(next(iter(b.values()))) for b in graph.sample),
        "threads": torch.get_num_threads(),
        "torch_ms": round(best(eager), 3),
        "onnxruntime_ms": round(best(ort), 3),
    }


def value_info(v: Any) -> dict[str, Any]:
    """An ONNX graph input or output -> {"name", "dtype", "shape"} (named axes are dynamic)."""
    from onnx import helper

    t = v.type.tensor_type
    return {
        "name": v.name,
        "dtype": str(helper.tensor_dtype_to_np_dtype(t.elem_type)),
        "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
    }
