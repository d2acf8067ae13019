"""The text kind's explain hook: which tokens of a sentence moved the prediction.

Integrated Gradients on the token embeddings (Captum's LayerIntegratedGradients on the
model's input embedding layer: danlu's RNN and Transformer `embed`, a pretrained encoder's
word embeddings), summed over the embedding's width per token. The baseline sentence has
the pad token at every position but the tokenizer's special ones ([CLS], [SEP] stay), with
the same attention mask, so the path changes token identities only. Steps are doubled per
row until completeness is within 1%, as for tables. Occlusion: f(x) - f(x with one token
replaced by pad). The output attributed is the class logit (regression: the prediction in
the target's units), by default of the predicted class.

The result is one row per token (row, position, token, attribution) with the row's
prediction and completeness, an HTML page with each sentence coloured per token and its
top tokens, and per token string the mean |attribution| as the global view.
"""

from __future__ import annotations

import copy
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from danlu.errors import DanluError
from danlu.explain import Explanation, check_method, load_predictor, run_frames, split_rows, target_index
from danlu.explain.attribution import FIRST_STEPS, MAX_STEPS, TOLERANCE, completeness_error, ig_method

METHODS = ("ig", "occlusion")


def embedding_layer(model: nn.Module, vocab_size: int) -> nn.Module:
    """The layer that turns token ids into vectors: `get_input_embeddings()` (transformers),
    `embed` (danlu's text models), else the one nn.Embedding as wide as the vocabulary."""
    for m in model.modules():
        get = getattr(m, "get_input_embeddings", None)
        if callable(get) and isinstance(get(), nn.Embedding):
            return get()
    if isinstance(getattr(model, "embed", None), nn.Embedding):
        return model.embed
    found = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size]
    if len(found) != 1:
        raise DanluError(f"explain: cannot tell the token embedding layer of model '{type(model).__name__}'")
    return found[0]


class TextExplainer:
    methods = METHODS
    kind = "text"

    def __init__(self, predictor: Any) -> None:
        self.predictor, self.run = predictor, predictor.run
        self.pre, self.schema = predictor.preprocessor, predictor.schema
        if self.schema.input_kind != "text":
            raise DanluError("explain: numeric-sequence runs cannot be explained yet; text runs can")
        self.model = copy.deepcopy(predictor.model).double().eval()
        self.layer = embedding_layer(self.model, self.pre.tok.get_vocab_size())
        self._frames: dict[str, pd.DataFrame] | None = None

    def read(self, path: str | Path) -> pd.DataFrame:
        from danlu.data.tabular import read_table

        return read_table(path)

    def split(self, name: str) -> pd.DataFrame:
        if self._frames is None:
            self._frames = run_frames(self.run, self.schema.task)
        return split_rows(self._frames, name)

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.schema.task == "classification":
            binary = getattr(self.predictor.task, "binary_logit", False)
            return torch.cat([-out, out], dim=1) if binary else out
        scale = torch.tensor(self.pre.target_scale, dtype=out.dtype)
        return out * scale + torch.tensor(self.pre.target_center, dtype=out.dtype)

    def explain(self, rows: Any, method: str = "ig", target: Any = None, where: str = "input") -> Explanation:
        check_method(method, self.methods, self.kind)
        frame = self.predictor.frame(rows)
        from danlu.data.sequences import _texts

        texts = _texts(frame, self.pre.column, where)
        encodings = self.pre.tok.encode_batch(texts)
        records, per_row = [], []
        for i, enc in enumerate(encodings):
            ids = torch.tensor([enc.ids or [self.pre.pad_id]])
            mask = torch.ones_like(ids)
            special = torch.tensor([enc.special_tokens_mask or [0]], dtype=torch.bool)
            base = torch.where(special, ids, torch.full_like(ids, self.pre.pad_id))
            with torch.no_grad():
                out = self.scores(ids, mask)
                fb_all = self.scores(base, mask)
            t = target_index(self.schema, target, out.argmax(1))
            fx, fb = float(out[0, t]), float(fb_all[0, t])
            if method == "ig":
                attr, steps = self._ig(ids, base, mask, t, fx - fb)
            else:
                attr, steps = self._occlusion(ids, mask, t, fx), 0
            words = enc.tokens or [""]
            err = float(completeness_error(attr.sum(), fx - fb))
            per_row.append(self._row_info(i, out, t, fx, fb, err if method == "ig" else None, steps))
            for pos, (tok, a) in enumerate(zip(words, attr, strict=False)):
                records.append({"row": i, "position": pos, "token": tok, "attribution": float(a)})
        tokens = pd.DataFrame(records)
        info_rows = pd.DataFrame(per_row)
        out_frame = tokens.merge(info_rows, on="row")
        importance = tokens.assign(abs=tokens["attribution"].abs()).groupby("token")["abs"].mean()
        importance.name = "mean |attribution|"
        info: dict[str, Any] = {
            "rows": len(texts),
            "baseline": "pad at every position but the special tokens",
        }
        if method == "ig":
            err = info_rows["completeness_error"].to_numpy()
            info["completeness_within_1pct"] = float((err <= TOLERANCE).mean())
            info["completeness_max_error"] = float(err.max())
            info["steps_min"], info["steps_max"] = (
                int(info_rows["steps"].min()),
                int(info_rows["steps"].max()),
            )
        page = render_html(texts, tokens, info_rows, method)
        return Explanation(out_frame, importance, method, info, page)

    def _row_info(
        self, i: int, out: torch.Tensor, t: torch.Tensor, fx: float, fb: float, err: float | None, steps: int
    ) -> dict[str, Any]:
        labels = self.schema.class_names if self.schema.task == "classification" else self.schema.targets
        row: dict[str, Any] = {"row": i}
        if self.schema.task == "classification":
            row["prediction"] = self.schema.classes[int(out.argmax(1))]
        row.update(target=labels[int(t)], output=fx, baseline_output=fb)
        if err is not None:
            row.update(completeness_error=err, steps=steps)
        return row

    def _ig(
        self, ids: torch.Tensor, base: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, gap: float
    ) -> tuple[np.ndarray, int]:
        """Layer IG on the embeddings, steps doubled until completeness is within 1%."""
        from danlu.explain import captum_attr

        lig = captum_attr().LayerIntegratedGradients(self.scores, self.layer)
        steps = FIRST_STEPS
        while True:
            attr = lig.attribute(
                ids,
                baselines=base,
                additional_forward_args=(mask,),
                target=t,
                n_steps=steps,
                method=ig_method(steps),
            )
            per_token = attr.detach().sum(-1)[0].numpy()
            if completeness_error(per_token.sum(), gap) <= TOLERANCE or steps * 2 > MAX_STEPS:
                return per_token, steps
            steps *= 2

    def _occlusion(self, ids: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, fx: float) -> np.ndarray:
        n = ids.shape[1]
        variants = ids.repeat(n, 1)
        variants[torch.arange(n), torch.arange(n)] = self.pre.pad_id
        with torch.no_grad():
            out = self.scores(variants, mask.repeat(n, 1))[:, int(t)]
        return (fx - out).numpy()


def render_html(texts: list[str], tokens: pd.DataFrame, rows: pd.DataFrame, method: str, top: int = 5) -> str:
    """Each sentence with its tokens coloured (red: towards the target, blue: away; the
    strength relative to the row's largest |attribution|), its prediction and top tokens."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>danlu explain</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        " .t{padding:1px 2px;margin:1px;border-radius:3px;display:inline-block}"
        " .row{margin:1.2em 0;border-bottom:1px solid #ddd;padding-bottom:.8em}"
        " .meta{color:#555;font-size:90%}</style>",
        f"<h1>Token attributions ({html.escape(method)})</h1>",
        "<p>Red tokens push the output towards the target, blue ones away; hover for the value.</p>",
    ]
    for (i, group), (_, info) in zip(tokens.groupby("row", sort=True), rows.iterrows(), strict=True):
        a = group["attribution"].to_numpy()
        peak = float(np.abs(a).max()) or 1.0
        spans = []
        for tok, v in zip(group["token"], a, strict=True):
            color = "220,50,47" if v > 0 else "38,139,210"
            spans.append(
                f"<span class='t' title='{v:.4g}' style='background:rgba({color},{abs(v) / peak:.2f})'>"
                f"{html.escape(str(tok))}</span>"
            )
        best = group.reindex(group["attribution"].abs().sort_values(ascending=False).index)[:top]
        listed = ", ".join(
            f"{html.escape(str(t))} ({v:+.3g})"
            for t, v in zip(best["token"], best["attribution"], strict=True)
        )
        pred = f"prediction {html.escape(str(info['prediction']))}, " if "prediction" in info else ""
        check = (
            f", completeness error {100 * info['completeness_error']:.2g}% ({int(info['steps'])} steps)"
            if "completeness_error" in info
            else ""
        )
        parts.append(
            f"<div class='row'><div>{''.join(spans)}</div><div class='meta'>row {i}: {pred}target"
            f" {html.escape(str(info['target']))}, output {info['output']:.4g} (baseline"
            f" {info['baseline_output']:.4g}){check}<br>top tokens: {listed}</div>"
            f"<div class='meta'>{html.escape(texts[i][:300])}</div></div>"
        )
    return "\n".join(parts) + "\n"


def explainer(run_dir: str | Path, trust_code: bool = False, loaded: Any = None) -> TextExplainer:
    """The text kind's explain hook."""
    return TextExplainer(loaded if loaded is not None else load_predictor(run_dir, trust_code))
