"""The audio kind: recordings (and their transcripts or labels), its hooks (danlu/kinds.py)
in one place.

registry.KINDS names `danlu.speech.kind:AUDIO` and registry.TASKS `danlu.speech.kind:task`,
so the core reaches the speech package only by those names."""

from __future__ import annotations

from typing import Any

from danlu.kinds import Kind, Trained


def is_audio(cfg: Any, task_type: str, model_cfg: Any) -> bool:
    return cfg.audio is not None or task_type == "speech_recognition"


def prepare(cfg: Any, task_type: str, seed: int, model_cfg: Any, pretrained: Any = None) -> Any:
    from danlu.speech.data import build

    return build(cfg, task_type, seed, model_cfg)


def finish(t: Trained) -> dict[str, Any]:
    """After training: the run's recognizer on its evaluation split (metrics, predictions, report)."""
    from danlu.speech.evaluation import finish_audio

    p = t.prepared
    if t.split not in p.splits:
        return {}
    data, frame = p.splits[t.split], p.frames[t.split]
    return finish_audio(t.run, t.cfg, t.model, t.task, p.schema, data, frame, t.split, t.cfg.eval.plots)


def describe_inputs(schema: Any) -> list[dict[str, Any]]:
    """One recording, resampled to the model's rate."""
    return [{"name": "audio", "type": "audio", "sample_rate": schema.sample_rate}]


def task(cfg: Any, schema: Any, y_train: Any, preprocessor: Any) -> Any:
    """registry.TASKS' speech_recognition entry."""
    from danlu.speech.task import SpeechRecognitionTask

    return SpeechRecognitionTask(cfg, schema)


AUDIO = Kind(
    "audio",
    serve="transcriptions",  # speech_recognition runs; audio classifiers are not served yet
    detect=is_audio,
    prepare=prepare,
    load="danlu.speech.recognizer:load_recognizer",
    finish=finish,
    evaluate="danlu.speech.evaluation:evaluate_audio_run",
    describe_inputs=describe_inputs,
    explain="danlu.explain.audio:explainer",  # audio classifiers: occlusion over time
    export_onnx="danlu.speech.onnx:graph",  # features in, log-probabilities (or logits) out
)
