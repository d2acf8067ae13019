"""Kinds of input: one `Kind` per kind (tables, images, text, multimodal rows, a language
model's corpus, audio), held in `registry.KINDS`. Every layer asks the run's kind instead of
branching on it: `data.build` (prepare), `api.train` (finish), `api.evaluate` (evaluate),
`predict.load` (load, preprocessor).

A hook is a plain callable or a lazy "module:attr" reference, imported on first use, so that
naming a kind imports nothing heavy (and this module imports nothing of danlu's but the
registry). Adding a kind: ARCHITECTURE.md, "Adding a kind"; tests/toykind.py is one.

The hooks, and what each is called with:
- detect(data_cfg, task_type, model_cfg) -> bool: is this config data of this kind? Built-in
  kinds are tried in registration order (`detect`); a kind without `detect` is only chosen by
  name (`data.kind: NAME` or `data.kind: package.module:KIND`).
- prepare(data_cfg, task_type, seed, model_cfg, pretrained) -> data.Prepared: read, split,
  fit preprocessing on train, tensorize.
- preprocessor(state, run_dir) -> the fitted preprocessor rebuilt from model.json (it has
  `schema()`), for the generic `predict.Predictor` (rows kinds; none for corpus and audio).
- load(run_dir, trust_code) -> the run's predictor (`danlu.load`, `danlu predict`): anything
  with `predict(rows)` and `predict_frame(path, proba) -> DataFrame`.
- finish(trained: Trained) -> summary dict: the final evaluation after training (metrics.json,
  predictions, report.md); {} when there is nothing to evaluate on.
- evaluate(run, cfg, split, data, plots, trust_code) -> summary dict: `danlu evaluate`.
- serve (a name, not a hook): what its requests look like to `danlu serve`: "rows" (JSON rows
  to POST /v1/predict), "completions" (OpenAI's completions and chat), "transcriptions"
  (OpenAI's audio transcriptions), "" (not served yet).
- describe_inputs(schema) -> list of {"name", "type", ...} or None: what one input row holds.
  The slot the server, explainer and exporter (issues after 15) read; filled where it is easy.
- explain(run_dir, trust_code, loaded) -> the run's explainer (`danlu explain`,
  `Predictor.explain`): its `methods`, and what the kind attributes: the baseline input and
  the forward whose output is attributed (danlu/explain/; `loaded`: the predictor, if built).
- export_onnx(run_dir, trust_code) -> danlu.onnx.graph.Graph: the run's exportable forward
  (an nn.Module from graph inputs to outputs, with names, dynamic axes, sample batches for
  the parity check and the preprocessing left outside); `danlu export --format onnx`. None:
  the kind cannot be exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from danlu.errors import DanluError
from danlu.registry import KINDS, UntrustedCodeError, import_object, reading_saved

Hook = str | Callable[..., Any] | None  # a callable, or "module:attr" imported on first use


@dataclass(frozen=True)
class Kind:
    name: str
    prepare: Hook
    load: Hook
    finish: Hook
    evaluate: Hook
    detect: Hook = None
    preprocessor: Hook = None
    describe_inputs: Hook = None
    serve: str = "rows"
    explain: Hook = None
    export_onnx: Hook = None

    def hook(self, name: str) -> Callable[..., Any]:
        """The hook `name` as a callable (imported on first use)."""
        h = getattr(self, name)
        if h is None:
            raise DanluError(f"input kind '{self.name}' has no {name} hook")
        return import_object(h) if isinstance(h, str) else h


@dataclass
class Trained:
    """What a kind's `finish` hook is given once training is done."""

    run: Any  # RunDir
    cfg: Any  # RunConfig
    model: Any  # the trained nn.Module (best weights restored), already saved in the folder
    task: Any
    prepared: Any  # data.Prepared
    result: Any  # training.trainer's FitResult: history, best_epoch
    split: str  # the split to report on: eval.split, else val
    trust_code: bool  # may the folder's model.json name user code (a new run's config is the user's)


def get(name: str, key: str = "data.kind") -> Kind:
    """The kind registered as `name`, or user code "package.module:KIND" (a Kind object)."""
    kind = KINDS.get(name, key)
    if not isinstance(kind, Kind):
        raise DanluError(f"{key}: '{name}' is a {type(kind).__name__}, not a danlu.kinds.Kind")
    return kind


def detect(data_cfg: Any, task_type: str, model_cfg: Any = None) -> Kind:
    """The kind of a data config: `data.kind` when it names one, else the first registered
    kind whose detect hook says yes (tabular, last, always does)."""
    name = getattr(data_cfg, "kind", "auto")
    if name != "auto":
        return get(name)
    seen: set[int] = set()
    for entry in KINDS.in_order():
        kind = get(entry)
        if id(kind) in seen or kind.detect is None:
            continue
        seen.add(id(kind))
        if kind.hook("detect")(data_cfg, task_type, model_cfg):
            return kind
    raise DanluError(f"no input kind recognises this data; set data.kind, one of: {', '.join(KINDS.names())}")


def saved_name(meta: dict[str, Any]) -> str:
    """The kind a run folder's model.json names: its "kind" key, or for a folder written
    before that key existed, what its schema says (a language model's schema says text)."""
    if isinstance(meta.get("kind"), str):
        return meta["kind"]
    schema = meta.get("schema") or {}
    if schema.get("task") == "language_modeling":
        return "corpus"
    return str(schema.get("input_kind") or "tabular")


def of_run(meta: dict[str, Any], file: Any, trust_code: bool = False) -> Kind:
    """The kind of a saved run, looked up by name in the registry: user code named by the
    folder ("package.module:KIND") is imported only with trust_code."""
    with reading_saved(file, trust_code):
        try:
            return get(saved_name(meta), "kind")
        except UntrustedCodeError:
            raise
        except DanluError as e:  # a name no danlu knows: say which file holds it
            raise DanluError(f"{file}: {e}") from None


# --------------------------------------------------------------------------- detection
# Tried in the order of registry.KINDS: each is one branch of the if-chain data.build had
# before kinds (multimodal, audio, text/sequence, corpus, image, then tabular).
def _is_multimodal(cfg: Any, task_type: str, model_cfg: Any) -> bool:
    return cfg.inputs is not None  # several named inputs of one row


def _is_text(cfg: Any, task_type: str, model_cfg: Any) -> bool:
    return cfg.text is not None or cfg.sequence is not None  # text or numeric-sequence columns


def _is_image(cfg: Any, task_type: str, model_cfg: Any) -> bool:
    return bool(import_object("danlu.data.images:is_image_data")(cfg, model_cfg))


def _always(cfg: Any, task_type: str, model_cfg: Any) -> bool:
    return True


# --------------------------------------------------------------------------- inputs
def describe_table(schema: Any) -> list[dict[str, Any]]:
    """One entry per feature column: numbers, or categories with their training values."""
    return [
        {"name": f, "type": "category" if f in schema.categorical else "number"} for f in schema.features
    ]


def describe_text(schema: Any) -> list[dict[str, Any]]:
    """The one text (or numeric-sequence) column, and its length limit."""
    kind = "text" if schema.input_kind == "text" else "sequence"
    return [{"name": schema.column, "type": kind, "max_length": schema.max_length}]


def describe_image(schema: Any) -> list[dict[str, Any]]:
    """One image (a path, or pixels), resized to the shape the model takes."""
    return [{"name": f, "type": "image", "shape": schema.image_shape} for f in schema.features]


def describe_multimodal(schema: Any) -> list[dict[str, Any]]:
    """Each named input as its own kind describes it, under its name."""
    described = {"tabular": describe_table, "text": describe_text, "image": describe_image}
    return [
        {"input": name, "kind": kind, "fields": described[kind](schema.inputs[name])}
        for name, kind in schema.kinds.items()
    ]


# --------------------------------------------------------------------------- the built-in kinds
# registered in registry.KINDS by name, in detection order (multimodal, audio, text, corpus,
# image, tabular; corpus is danlu/lm/kind.py's CORPUS, audio danlu/speech/kind.py's AUDIO);
# "sequence" names TEXT too (a numeric-sequence run's schema says so)
# rows: each example is one row of a table (or a file a row names); the generic Predictor,
# final evaluation and report of danlu/finish.py serve them all
ROWS = {
    "load": "danlu.predict:Predictor",
    "finish": "danlu.finish:finish_rows",
    "evaluate": "danlu.finish:evaluate_rows",
}
MULTIMODAL = Kind(
    "multimodal",
    detect=_is_multimodal,
    prepare="danlu.data.multimodal:build",
    preprocessor="danlu.data.multimodal:MultimodalPreprocessor.from_state",
    describe_inputs=describe_multimodal,
    export_onnx="danlu.onnx.rows:graph",
    **ROWS,
)
TEXT = Kind(  # text or numeric-sequence columns (danlu/data/sequences.py)
    "text",
    detect=_is_text,
    prepare="danlu.data:build_sequences",
    preprocessor="danlu.data.sequences:preprocessor_from_state",
    describe_inputs=describe_text,
    explain="danlu.explain.text:explainer",
    export_onnx="danlu.onnx.rows:graph",
    **ROWS,
)
IMAGE = Kind(
    "image",
    detect=_is_image,
    prepare="danlu.data.images:build",
    preprocessor="danlu.data.images:ImagePreprocessor.from_state",
    describe_inputs=describe_image,
    explain="danlu.explain.image:explainer",
    export_onnx="danlu.onnx.rows:graph",
    **ROWS,
)
TABULAR = Kind(
    "tabular",
    detect=_always,
    prepare="danlu.data:build_table",
    preprocessor="danlu.data.tabular:TabularPreprocessor.from_state",
    describe_inputs=describe_table,
    explain="danlu.explain.tabular:explainer",
    export_onnx="danlu.onnx.rows:graph",
    **ROWS,
)
