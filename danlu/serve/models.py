"""The models a server holds: each model reference (anything the other commands accept) is
loaded through danlu's own loaders, and becomes one of four kinds of served model:

  - `RowsModel`: a run of rows (tabular, text, multimodal): the run kind's `load` hook
    (`danlu.predict.load`), served at POST /v1/predict/{name};
  - `TextModel`: a language model (a danlu GPT run, a Hugging Face GPT-2 or causal-LM folder):
    `danlu.lm.load`, served at /v1/completions and /v1/chat/completions;
  - `SpeechModel`: a speech_recognition run, a Hugging Face CTC or Whisper folder, a CTranslate2
    Whisper folder: `danlu.speech.recognizer`, served at /v1/audio/transcriptions;
  - a recommendation run: its kind's `load` hook (`danlu.recommend.recommender`), served at
    POST /v1/recommend/{name}.

Loading follows the CLI's safety rules: a run folder's user code only with trust_code, a Hugging
Face folder's own code only with trust_remote_code. Each model owns one worker thread, where
its forward passes run (torch never blocks the event loop, and one model's passes never overlap).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danlu.errors import DanluError


@dataclass
class Served:
    name: str
    source: str  # the reference it was loaded from
    kind: str  # "rows" | "text" | "speech" | "recommend"
    model: Any  # Predictor, LoadedLM or speech SpeechModel
    created: int = 0
    inputs: list[dict[str, Any]] | None = None  # rows: the kind's describe_inputs of its schema
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "danlu-serve"))
    # danlu's own GPT: the continuous-batching loop on the worker (danlu/serve/text.py makes it)
    decoder: Any = None
    max_rows: int = 16  # rows of that loop's batch
    on_step: Any = None  # sees each step's number of rows (the server's metrics)
    runtime: str = ""  # rows: which runtime predicts, when there was a choice (onnx/runtime.py)

    @property
    def endpoints(self) -> list[str]:
        return {
            "rows": [f"POST /v1/predict/{self.name}"],
            "text": ["POST /v1/completions", "POST /v1/chat/completions"],
            "speech": ["POST /v1/audio/transcriptions"],
            "recommend": [f"POST /v1/recommend/{self.name}"],
        }[self.kind]

    def card(self) -> dict[str, Any]:
        """The OpenAI model object, plus what danlu knows about the model."""
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "danlu",
            "kind": self.kind,
            "endpoints": self.endpoints,
        }


def _run_kind(path: Path) -> tuple[str, dict[str, Any]] | None:
    """(kind name, model.json) of a danlu run folder; None for any other folder."""
    if not (path / "model.json").is_file():
        return None
    try:
        meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DanluError(f"cannot read '{path / 'model.json'}': {e}") from None
    from danlu.kinds import saved_name

    task = meta.get("task")
    if (task.get("type") if isinstance(task, dict) else task) == "language_modeling":
        return "corpus", meta  # also a folder whose schema does not say so (written by hand)
    return saved_name(meta), meta


def load_model(
    name: str,
    ref: str,
    *,
    trust_code: bool = False,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    device: str | None = None,
    runtime: str = "auto",
) -> Served:
    """Load `ref` as the kind of served model it is (see the module docstring)."""
    import time

    from danlu.hub import locate_model

    path = locate_model(ref)
    now = int(time.time())
    if path.is_file() and path.suffix == ".gguf":  # a GGUF language model (danlu/lm/load.py)
        return Served(name, ref, "text", _load_lm(path, trust_remote_code, dtype, device), now)
    if not path.is_dir():
        raise DanluError(f"model '{ref}' is a file; give a run folder, a model folder or a .gguf file")
    run = _run_kind(path)
    if run is not None:
        kind_name, meta = run
        from danlu import kinds

        family = kinds.of_run({**meta, "kind": kind_name}, path / "model.json", trust_code).serve
        if family == "completions":
            return Served(name, ref, "text", _load_lm(path, trust_remote_code, dtype, device), now)
        if family == "transcriptions":
            task = meta.get("task")
            if (task.get("type") if isinstance(task, dict) else task) != "speech_recognition":
                raise DanluError(
                    f"'{ref}' classifies audio; the server transcribes speech_recognition runs only (yet)"
                )
            return Served(name, ref, "speech", _load_speech(path, trust_code, False, device), now)
        if family == "recommendations":
            from danlu.predict import load

            return Served(name, ref, "recommend", load(path, trust_code), now)
        if family != "rows":
            raise DanluError(f"'{ref}' is a {kind_name} run; danlu serve does not serve that kind yet")
        from danlu.onnx.runtime import load as load_rows

        # torch's predictor, or onnxruntime's over the run's export (--runtime, as danlu predict)
        predictor, which = load_rows(path, trust_code, runtime)
        inputs = describe(predictor, meta, path, trust_code)
        return Served(name, ref, "rows", predictor, now, inputs, runtime=which)
    from danlu.speech.recognizer import speech_kind

    try:
        speech_kind(path)
    except DanluError:  # not a speech folder: a language model, or a clear error from its loader
        return Served(name, ref, "text", _load_lm(path, trust_remote_code, dtype, device), now)
    return Served(name, ref, "speech", _load_speech(path, False, trust_remote_code, device), now)


def _load_lm(path: Path, trust_remote_code: bool, dtype: str | None, device: str | None) -> Any:
    from danlu.lm.load import resolve_lm

    return resolve_lm(path, trust_remote_code=trust_remote_code, dtype=dtype, device=device)


def _load_speech(path: Path, trust_code: bool, trust_remote_code: bool, device: str | None) -> Any:
    from danlu.speech.recognizer import resolve_speech

    return resolve_speech(path, device=device, trust_remote_code=trust_remote_code, trust_code=trust_code)


def describe(
    predictor: Any, meta: dict[str, Any], path: Path, trust_code: bool
) -> list[dict[str, Any]] | None:
    """The run kind's describe_inputs hook on its schema: what one input row holds."""
    from danlu import kinds

    kind = kinds.of_run(meta, path / "model.json", trust_code)
    schema = getattr(predictor, "schema", None)
    if kind.describe_inputs is None or schema is None:
        return None
    return kind.hook("describe_inputs")(schema)  # type: ignore[no-any-return]


def _fields(inputs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Every field, the named inputs of a multimodal row opened up."""
    out: list[dict[str, Any]] = []
    for f in inputs or []:
        out += _fields(f["fields"]) if "fields" in f else [f]
    return out


def image_fields(served: Served) -> list[str]:
    """The names of a rows model's image fields (their values come as base64 or uploads)."""
    return [f["name"] for f in _fields(served.inputs) if f.get("type") == "image"]


def parse_specs(refs: list[str], names: list[str]) -> dict[str, str]:
    """name -> reference. Each MODEL is served under its folder's name; `--name NAME=MODEL`
    renames one (MODEL as given on the command line)."""
    renamed: dict[str, str] = {}
    for spec in names:
        name, sep, ref = spec.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise DanluError(f"--name {spec!r}: expected NAME=MODEL, e.g. --name tutor=runs/tutorial")
        if ref not in refs:
            refs = [*refs, ref]
        renamed[ref] = name.strip()
    if not refs:
        raise DanluError("no model given; danlu serve MODEL [MODEL ...]")
    out: dict[str, str] = {}
    for ref in refs:
        name = renamed.get(ref) or Path(ref.rstrip("/\\")).name or ref
        if "/" in name or not name:
            raise DanluError(f"model name {name!r} must not contain '/'; rename it with --name NAME={ref}")
        if name in out:
            raise DanluError(
                f"two models are named '{name}' ({out[name]} and {ref}); rename one with --name NAME=MODEL"
            )
        out[name] = ref
    return out
