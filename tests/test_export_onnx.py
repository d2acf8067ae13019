"""`danlu export RUN --format onnx OUT` and `danlu predict RUN --runtime onnx` on the tiny run
folders of tests/fixtures/runs_v1 (copied first: the export goes into RUN/onnx).

Parity is checked by the export itself (onnxruntime vs eager PyTorch on the run's test split);
here the whole path is checked: predictions through onnxruntime equal PyTorch's, and every
way an export can go wrong leaves nothing behind with one line of error."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import assert_user_error

from danlu.errors import DanluError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runs_v1"
# run -> predict input relative to runs_v1, as test_old_runs.py uses them
ROWS = {
    "tabular_classification": "data/iris.csv",
    "tabular_regression": "data/regression.csv",
    "image": "data/shapes/light",
    "text": "data/sentences.csv",
    "multimodal": "data/multimodal.csv",
}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES, tmp_path / "runs_v1"))


@pytest.fixture
def torchscript(monkeypatch: pytest.MonkeyPatch) -> None:
    """Export with TorchScript's exporter alone: a fraction of a second where dynamo takes
    seconds. The rest of the path (checker, parity, metadata, runtime) is the same; the slow
    tests export every kind with the default (dynamo first)."""
    from danlu.onnx import export

    monkeypatch.setattr(export, "EXPORTERS", ("TorchScript",))


def ok(invoke: Any, *args: Any, cwd: Path) -> Any:
    result = invoke(*args, cwd=cwd)
    assert result.exit_code == 0, f"danlu {' '.join(map(str, args))}: {result.stderr}{result.exception or ''}"
    return result


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders an export left beside its OUT."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def same_predictions(invoke: Any, runs: Path, run: str, proba: list[str]) -> None:
    """`predict --runtime onnx` prints what `--runtime torch` does: labels and passed-through
    columns identical, probabilities and regression outputs within the parity tolerance."""
    args = ("predict", run, "--input", ROWS[run], *proba)
    want = pd.read_csv(
        io.StringIO(ok(invoke, *args, "--runtime", "torch", cwd=runs).stdout), keep_default_na=False
    )
    onnx_out = ok(invoke, *args, "--runtime", "onnx", cwd=runs)
    assert "runtime: onnxruntime (--runtime onnx)" in onnx_out.stderr
    got = pd.read_csv(io.StringIO(onnx_out.stdout), keep_default_na=False)
    assert list(got.columns) == list(want.columns) and len(got) == len(want) > 0
    for col in want.columns:
        if pd.api.types.is_float_dtype(want[col]):
            np.testing.assert_allclose(got[col], want[col], rtol=1e-4, atol=1e-5, err_msg=col)
        else:  # predicted labels, passed-through columns: identical
            assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col


@pytest.mark.slow
@pytest.mark.parametrize("run", list(ROWS))
def test_onnx_predictions_equal_pytorch(invoke_cli: Any, runs: Path, run: str) -> None:
    out = runs / run / "onnx"
    ok(invoke_cli, "export", run, "--format", "onnx", out, cwd=runs)
    assert sorted(p.name for p in out.iterdir()) >= ["metadata.json", "model.onnx"]
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    parity = meta["parity"]
    assert parity["checked_on"].startswith("test split") and parity["rows"] > 0
    assert parity["max_abs_diff"] <= 1e-5 + 1e-4 * 10 and parity["atol"] == 1e-5 and parity["rtol"] == 1e-4
    assert meta["opset"] >= 17 and meta["exporter"] == "torch.onnx.export (dynamo)"
    assert all(i["shape"][0] == "batch" for i in meta["inputs"]), meta["inputs"]
    assert meta["faster"] in ("torch", "onnxruntime") and meta["timing"]["threads"] >= 1
    classification = run != "tabular_regression"
    if classification:
        assert parity["labels_identical"] == 1.0 and meta["labels"], meta
    if run in ("text", "multimodal"):
        assert any(f.startswith("tokenizer") for f in meta["files"]), meta["files"]
        assert any(i["shape"][1] != "batch" and isinstance(i["shape"][1], str) for i in meta["inputs"])

    proba = ["--proba"] if classification else []
    same_predictions(invoke_cli, runs, run, proba)
    if run == "tabular_classification":  # the Python API picks the runtime the same way
        import danlu
        from danlu.onnx.runtime import OnnxPredictor

        in_ort = danlu.load(runs / run, runtime="onnx")
        assert isinstance(in_ort, OnnxPredictor) and not isinstance(danlu.load(runs / run), OnnxPredictor)
        rows = pd.read_csv(runs / ROWS[run])
        np.testing.assert_allclose(
            in_ort.predict_proba(rows), danlu.load(runs / run).predict_proba(rows), rtol=1e-4, atol=1e-5
        )
    # the default picks the runtime that was faster at export time, and says which
    auto = ok(invoke_cli, "predict", run, "--input", ROWS[run], cwd=runs)
    assert auto.stderr.startswith(f"runtime: {meta['faster']}"), auto.stderr


def test_tabular_graph_holds_the_fitted_preprocessing_and_a_stale_export_is_refused(
    invoke_cli: Any, runs: Path, torchscript: None
) -> None:
    """Raw numbers in (scaling inside the graph), documented in metadata.json: onnxruntime
    alone predicts from values taken straight from the CSV. An export of other weights than
    the run holds now is refused (--runtime onnx) or passed over (auto); --force replaces it."""
    import onnxruntime as ort

    run, out = runs / "tabular_classification", runs / "tabular_classification" / "onnx"
    ok(invoke_cli, "export", run, "--format", "onnx", out, cwd=runs)
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    numeric = meta["preprocessing"]["inputs"]["numeric"]
    assert [i["name"] for i in meta["inputs"]] == ["numeric"] and meta["outputs"][0]["name"] == "logits"
    assert numeric["inside"] == "(numeric - center) / scale" and len(numeric["center"]) == 4
    rows = pd.read_csv(runs / "data" / "iris.csv")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"numeric": rows[numeric["columns"]].to_numpy(np.float64)})
    labels = np.asarray(meta["labels"])[logits.argmax(1)]
    args = ("predict", run, "--input", "data/iris.csv")
    predicted = pd.read_csv(io.StringIO(ok(invoke_cli, *args, "--runtime", "torch", cwd=runs).stdout))
    assert labels.tolist() == predicted["prediction"].astype(str).tolist()
    same_predictions(invoke_cli, runs, "tabular_classification", ["--proba"])

    # as if the run had been trained again after the export
    (out / "metadata.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}), encoding="utf-8")
    assert_user_error(
        invoke_cli(*args, "--runtime", "onnx", cwd=runs), "exported from other weights", "--force"
    )
    if meta["faster"] == "onnxruntime":  # auto would have taken it: now PyTorch, saying why
        assert "exported from other weights" in ok(invoke_cli, *args, cwd=runs).stderr
    ok(invoke_cli, "export", run, "--format", "onnx", out, "--force", cwd=runs)
    assert (
        json.loads((out / "metadata.json").read_text(encoding="utf-8"))["weights_sha256"]
        == meta["weights_sha256"]
    )
    assert leftovers(run) == []


@pytest.mark.slow
def test_language_model_and_speech_runs_export(invoke_cli: Any, runs: Path) -> None:
    ok(invoke_cli, "export", "language_model", "--format", "onnx", "lm", cwd=runs)
    meta = json.loads((runs / "lm" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["inputs"][0]["name"] == "input_ids" and meta["inputs"][0]["shape"] == ["batch", "tokens"]
    assert (
        meta["outputs"][0]["shape"][:2] == ["batch", "tokens"] and (runs / "lm" / "tokenizer.json").is_file()
    )
    assert meta["parity"]["labels_identical"] == 1.0
    for run, first in (("speech_recognition", "log_probs"), ("audio_classification", "logits")):
        ok(invoke_cli, "export", run, "--format", "onnx", run + "_onnx", cwd=runs)
        meta = json.loads((runs / (run + "_onnx") / "metadata.json").read_text(encoding="utf-8"))
        assert [i["name"] for i in meta["inputs"]] == ["features", "lengths"]
        assert meta["outputs"][0]["name"] == first and meta["inputs"][0]["shape"][:2] == ["batch", "frames"]


@pytest.mark.parametrize(
    "cell,pooling,bidirectional,layers",
    [("lstm", "last", True, 2), ("gru", "attention", True, 1), ("rnn", "mean", False, 2)],
)
def test_recurrent_encoders_export_without_packed_sequences(
    cell: str, pooling: str, bidirectional: bool, layers: int, tmp_path: Path
) -> None:
    """The exportable form of an RNN text encoder (danlu/onnx/rnn.py) gives the packed
    model's outputs, eagerly and through onnxruntime, on rows of different lengths."""
    from types import SimpleNamespace

    import onnxruntime as ort
    import torch

    from danlu.config import RNNConfig
    from danlu.models.rnn import RNNEncoder
    from danlu.onnx.rnn import without_packing

    torch.manual_seed(0)
    cfg = RNNConfig(cell=cell, pooling=pooling, bidirectional=bidirectional, layers=layers, hidden=8)
    schema = SimpleNamespace(input_kind="text", vocab_size=30, pad_id=0)
    model = RNNEncoder(cfg.model_copy(update={"embedding_dim": 6}), schema, 3).eval()
    lengths = torch.tensor([7, 3, 1, 5])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, 30, (4, 7)) * mask
    exportable = without_packing(model).eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(exportable(input_ids=ids, attention_mask=mask), want, atol=1e-6, rtol=1e-5)
    path = tmp_path / "rnn.onnx"
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    with pytest.warns(DeprecationWarning):  # TorchScript's exporter: fast, and enough here
        torch.onnx.export(
            exportable, (ids, mask), str(path), input_names=list(axes), dynamic_axes=axes, dynamo=False
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-4)
    # another batch size and width than the traced ones
    (got,) = session.run(None, {"input_ids": ids[1:3, :4].numpy(), "attention_mask": mask[1:3, :4].numpy()})
    np.testing.assert_allclose(got, want[1:3].numpy(), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- bad input
def test_out_exists_is_refused_without_force(invoke_cli: Any, runs: Path) -> None:
    out = runs / "tabular_classification" / "onnx"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert_user_error(
        invoke_cli("export", "tabular_classification", "--format", "onnx", out, cwd=runs),
        "already exists",
        "--force",
    )
    # --force replaces only an earlier export: never a folder of something else (the run itself)
    assert_user_error(
        invoke_cli("export", "tabular_classification", "--format", "onnx", out, "--force", cwd=runs),
        "not an ONNX export",
    )
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    run = runs / "tabular_classification"
    assert_user_error(
        invoke_cli("export", run, "--format", "onnx", run, "--force", cwd=runs), "not an ONNX export"
    )
    assert (run / "model.safetensors").is_file()


def test_runtime_onnx_without_an_export_says_how_to_make_one(invoke_cli: Any, runs: Path) -> None:
    result = invoke_cli(
        "predict", "tabular_classification", "--input", "data/iris.csv", "--runtime", "onnx", cwd=runs
    )
    assert_user_error(result, "holds no ONNX export", "danlu export tabular_classification --format onnx")
    import danlu

    with pytest.raises(DanluError, match="holds no ONNX export"):
        danlu.load(runs / "tabular_classification", runtime="onnx")
    with pytest.raises(DanluError, match="--runtime"):
        danlu.load(runs / "tabular_classification", runtime="tensorrt")


def test_a_kind_without_an_exportable_forward_is_refused(invoke_cli: Any, runs: Path) -> None:
    run = runs / "tabular_classification"
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    (run / "model.json").write_text(json.dumps({**meta, "kind": "toykind:BAG"}), encoding="utf-8")
    result = invoke_cli("export", run, "--format", "onnx", "out", "--trust-code", cwd=runs)
    assert_user_error(result, "a 'bag' run cannot be exported to ONNX", "no exportable forward")
    assert not (runs / "out").exists() and leftovers(runs) == []


def test_an_operator_onnx_lacks_fails_the_export_and_leaves_nothing(
    invoke_cli: Any, runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def unsupported(module: Any, args: Any, f: str, **kw: Any) -> None:
        Path(f).write_bytes(b"half an ONNX file")  # what a failing exporter may leave
        raise RuntimeError(
            "Exporting the operator 'aten::fft_rfft2' to ONNX opset version 18 is not supported"
        )

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    result = invoke_cli("export", "tabular_classification", "--format", "onnx", "out", cwd=runs)
    assert_user_error(result, "cannot export this mlp model to ONNX", "aten::fft_rfft2")
    assert not (runs / "out").exists() and leftovers(runs) == []


def test_a_parity_failure_names_the_largest_difference_and_leaves_nothing(
    invoke_cli: Any, runs: Path, monkeypatch: pytest.MonkeyPatch, torchscript: None
) -> None:
    from danlu.onnx import export, runtime

    class Drifting:  # onnxruntime answering slightly differently from PyTorch
        def __init__(self, path: Path) -> None:
            self.real = runtime.session(path)

        def run(self, names: Any, feeds: Any) -> list[np.ndarray]:
            out = self.real.run(names, feeds)
            out[0][3, 1] += 0.01
            return out

    monkeypatch.setattr(export, "session", Drifting)
    result = invoke_cli("export", "tabular_classification", "--format", "onnx", "out", cwd=runs)
    assert_user_error(
        result, "ONNX parity failed", "largest difference at logits[3, 1]", "nothing was written"
    )
    assert not (runs / "out").exists() and leftovers(runs) == []
