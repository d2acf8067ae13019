"""The interactions kind: user-item interactions, its hooks (danlu/kinds.py) in one place, and
the `recommendation` task entry.

registry.KINDS names `danlu.recommend.kind:INTERACTIONS` and registry.TASKS
`danlu.recommend.kind:task`, so the core reaches this package only by those names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from danlu.config import RECOMMEND_SOURCES as SOURCES
from danlu.errors import DanluError
from danlu.kinds import Kind, Trained


def is_interactions(cfg: Any, task_type: str, model_cfg: Any) -> bool:
    return cfg.source in SOURCES or task_type == "recommendation"


def prepare(cfg: Any, task_type: str, seed: int, model_cfg: Any = None, pretrained: Any = None) -> Any:
    from danlu.recommend.data import prepare as prepare_interactions

    if cfg.source not in SOURCES:
        raise DanluError(
            "task.type recommendation reads user-item interactions: set data.source to one of"
            f" {', '.join(SOURCES)}"
        )
    if task_type not in ("auto", "recommendation"):
        raise DanluError(f"data.source {cfg.source} is for task.type recommendation, not {task_type}")
    return prepare_interactions(cfg, task_type, seed, model_cfg)


def task(cfg: Any, schema: Any, y_train: Any, preprocessor: Any) -> Any:
    """registry.TASKS' recommendation entry: ratings (mf) or ranking (the rest)."""
    from danlu.recommend.task import RankingTask, RatingTask

    if schema.objective == "rating":
        return RatingTask(cfg, schema)
    return RankingTask(cfg, schema, preprocessor)


def finish(t: Trained) -> dict[str, Any]:
    """After training: metrics.json (the model beside the popularity floor, and the protocol),
    predictions.csv (every evaluated user's top K) and report.md."""
    from danlu.recommend.recommender import Recommender

    p = t.prepared
    if t.split not in p.frames:
        return {}
    rec = Recommender(t.model, p.preprocessor, str(t.run.path))
    return score(t.run, t.cfg, rec, p.frames, t.split, p.info, t.cfg.eval.plots)


def evaluate(run: Any, cfg: Any, split: str, data: str | Path | None, plots: bool, trust_code: bool) -> Any:
    """`danlu evaluate RUN`: the run's split read again from its config (the same split for the
    same seed) and scored by the saved model under the saved index. `--data FILE`: the file's
    interactions scored as a test split (what the user saw in training and validation left
    out), written under evaluations/<file stem>/ so the run's own results stay."""
    from danlu.recommend.data import dedupe, read_file
    from danlu.recommend.data import prepare as prepare_interactions
    from danlu.recommend.recommender import Recommender

    rec = Recommender.load(run.path, trust_code)
    if data is None:
        prepared = prepare_interactions(cfg.data, cfg.task.type, cfg.seed, cfg.model)
        if split not in prepared.frames:
            raise DanluError(f"--split: the run has no {split} split; it has: {', '.join(prepared.frames)}")
        return score(run, cfg, rec, prepared.frames, split, prepared.info, plots)
    frame, merged = dedupe(read_file(cfg.data, Path(data)), cfg.data.duplicates, str(data))
    if rec.index.objective == "rating" and "rating" not in frame.columns:
        raise DanluError(f"--data {data}: no rating column; this run predicts ratings")
    if rec.index.min_rating is not None and "rating" not in frame.columns:
        raise DanluError(
            f"--data {data}: no rating column; this run counts ratings >= {rec.index.min_rating:g}"
            " as positives"
        )
    info = {
        "interactions": {"data": len(frame)},
        "duplicates_merged": merged,
        "users": rec.index.n_users,
        "items": rec.index.n_items,
        "unseen": {},
    }
    frames = {"train": rec.index.history_frame(), "test": frame}
    return score(run.for_data(data), cfg, rec, frames, "test", info, plots, label=f"--data {Path(data).name}")


def score(
    run: Any,
    cfg: Any,
    rec: Any,
    frames: dict[str, Any],
    split: str,
    info: dict[str, Any],
    plots: bool = True,
    label: str | None = None,
) -> dict:
    """metrics.json, report.md and plots of the model on one split (frames: the raw
    interactions); label names the split in the protocol when it is not one of the run's."""
    import numpy as np
    import torch

    from danlu.recommend import evaluation
    from danlu.recommend.data import ranking_split, rating_split
    from danlu.recommend.models import Popularity
    from danlu.recommend.report import write_report

    index, frame = rec.index, frames[split]
    objective = index.objective
    curves: dict[str, dict[str, float]] = {}
    if objective == "rating":
        data = rating_split(index, frame)
        rec.model.eval()
        with torch.no_grad():
            pred = rec.model(users=data.inputs["users"], items=data.inputs["items"])[:, 0]
        low, high = index.rating_range
        pred = pred.clamp(low, high).numpy()
        y = data.y.numpy()
        metrics = {"rmse": evaluation.rmse(y, pred), "mae": evaluation.mae(y, pred)}
        mean = np.full_like(y, index.rating_mean)
        floor = {"mean rating": {"rmse": evaluation.rmse(y, mean), "mae": evaluation.mae(y, mean)}}
        rows, per_user = len(y), np.zeros(0)
        u, i = index.codes(frame)
        unseen = {"users": int((u >= index.n_users).sum()), "items": int((i >= index.n_items).sum())}
    else:
        if max(cfg.eval.k) > index.n_items:
            raise DanluError(
                f"eval.k: {max(cfg.eval.k)} is more than the {index.n_items} items the model ranks"
            )
        data, unseen = ranking_split(index, frame)
        metrics, per_user = evaluation.evaluate_ranking(rec.model, index, data, cfg.eval, cfg.seed, split)
        popularity = Popularity(None, index.schema())
        floor = {
            "popularity": evaluation.evaluate_ranking(popularity, index, data, cfg.eval, cfg.seed, split)[0]
        }
        if plots and len(data):
            ks = evaluation.curve_ks(cfg.eval.k, index.n_items)
            curves = {
                name: evaluation.evaluate_ranking(m, index, data, cfg.eval, cfg.seed, split, ks)[0]
                for name, m in ((cfg.model.type, rec.model), ("popularity", popularity))
            }
        rows = len(data)
    if label is not None:
        info["unseen"] = {"data": unseen}
    protocol = evaluation.protocol(cfg, label or split, objective)
    summary = {
        "title": f"{label or split + ' split'} ({rows} {'ratings' if objective == 'rating' else 'users'})",
        "task": "recommendation",
        "split": label or split,
        "rows": rows,
        "metrics": metrics,
        "floor": floor,
        "protocol": protocol,
        "data": info,
    }
    run.write_metrics(summary)
    write_report(run, cfg, rec, frames, split, summary, per_user, curves)
    return summary


INTERACTIONS = Kind(
    "interactions",
    serve="recommendations",  # POST /v1/recommend/{model} (danlu/serve/server.py)
    detect=is_interactions,
    prepare=prepare,
    preprocessor="danlu.recommend.data:Index.from_state",
    load="danlu.recommend.recommender:load",
    finish=finish,
    evaluate=evaluate,
    describe_inputs=lambda schema: [{"name": "user", "type": "id"}],
)
