"""The corpus kind's explain hook (danlu's GPT runs): which prompt tokens made the model
generate its next token.

Integrated Gradients on the token embeddings (the output of `transformer.wte`), from a
baseline of zero vectors at every prompt position (the position embeddings stay, so the
path changes what is said, not where), to the logit of the generated token: the greedy
next token, or `--target TEXT` when that text is one token. Steps are doubled per prompt
until completeness is within 1%. One row per prompt token; an HTML page like text runs'.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from danlu.errors import DanluError
from danlu.explain import Explanation, check_method
from danlu.explain.attribution import FIRST_STEPS, MAX_STEPS, TOLERANCE, completeness_error, ig_method
from danlu.explain.text import render_html


class LMExplainer:
    methods = ("ig",)
    kind = "corpus"

    def __init__(self, run_dir: Path) -> None:
        from danlu.lm.load import load_run
        from danlu.run import RunDir

        self.run = RunDir.open(run_dir)
        lm = load_run(self.run.path)
        self.tok = lm.tokenizer
        self.model = copy.deepcopy(lm.model).double().eval()
        self.wte = self.model.transformer.wte

    def read(self, path: str | Path) -> list[str]:
        """Prompts: a text file, one per line (a table: its `prompt` column, else its first)."""
        path = Path(path)
        if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".parquet"):
            from danlu.data.tabular import read_table

            df = read_table(path)
            return [str(v) for v in df["prompt" if "prompt" in df.columns else df.columns[0]]]
        if not path.is_file():
            raise DanluError(f"{path}: prompts file not found")
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise DanluError(f"{path}: no prompts (one per line)")
        return prompts

    def split(self, name: str) -> Any:
        raise DanluError("--split: a language model's explanations take prompts; give --input FILE")

    def explain(self, rows: Any, method: str = "ig", target: Any = None, where: str = "input") -> Explanation:
        check_method(method, self.methods, self.kind)
        prompts = [rows] if isinstance(rows, str) else list(rows)
        wanted = None
        if target is not None:
            ids = self.tok.encode(str(target))
            if len(ids) != 1:
                raise DanluError(
                    f"--target '{target}' is {len(ids)} tokens for this model's tokenizer; give one token"
                )
            wanted = ids[0]
        records, per_row = [], []
        for i, prompt in enumerate(prompts):
            ids = torch.tensor([self.tok.encode(prompt)])
            if ids.shape[1] == 0:
                raise DanluError(f"{where}: prompt {i + 1} is empty")
            ids = ids[:, -self.model.config.block_size :]
            with torch.no_grad():
                emb = self.wte(ids)

            def logits(e: torch.Tensor, ids: torch.Tensor = ids) -> torch.Tensor:
                handle = self.wte.register_forward_hook(lambda m, inp, out: e)
                try:
                    return self.model(ids.expand(len(e), -1), last_only=True)[:, -1, :]
                finally:
                    handle.remove()

            with torch.no_grad():
                out, base_out = logits(emb)[0], logits(torch.zeros_like(emb))[0]
            t = int(out.argmax()) if wanted is None else wanted
            fx, fb = float(out[t]), float(base_out[t])
            per_token, steps = _ig(logits, emb, t, fx - fb)
            gap = fx - fb
            err = float(completeness_error(per_token.sum(), gap))
            token = self.tok.decode([t])
            per_row.append(
                {
                    "row": i,
                    "prediction": token,
                    "target": token,
                    "output": fx,
                    "baseline_output": fb,
                    "completeness_error": err,
                    "steps": steps,
                }
            )
            for pos, (tid, a) in enumerate(zip(ids[0].tolist(), per_token, strict=True)):
                records.append(
                    {"row": i, "position": pos, "token": self.tok.decode([tid]), "attribution": float(a)}
                )
        tokens, info_rows = pd.DataFrame(records), pd.DataFrame(per_row)
        importance = tokens.assign(abs=tokens["attribution"].abs()).groupby("token")["abs"].mean()
        err = info_rows["completeness_error"].to_numpy()
        info = {
            "rows": len(prompts),
            "baseline": "zero token embeddings (positions kept)",
            "completeness_within_1pct": float((err <= TOLERANCE).mean()),
            "completeness_max_error": float(err.max()),
            "steps_min": int(info_rows["steps"].min()),
            "steps_max": int(info_rows["steps"].max()),
        }
        page = render_html(prompts, tokens, info_rows, method)
        return Explanation(tokens.merge(info_rows, on="row"), importance, method, info, page)


def _ig(fn: Any, emb: torch.Tensor, target: int, gap: float) -> tuple[Any, int]:
    from danlu.explain import captum_attr

    ig = captum_attr().IntegratedGradients(fn)
    steps = FIRST_STEPS
    while True:
        attr = ig.attribute(
            emb, baselines=torch.zeros_like(emb), target=target, n_steps=steps, method=ig_method(steps)
        )
        per_token = attr.detach().sum(-1)[0].numpy()
        if completeness_error(per_token.sum(), gap) <= TOLERANCE or steps * 2 > MAX_STEPS:
            return per_token, steps
        steps *= 2


def explainer(run_dir: str | Path, trust_code: bool = False, loaded: Any = None) -> LMExplainer:
    """The corpus kind's explain hook."""
    return LMExplainer(Path(run_dir))
