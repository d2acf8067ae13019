"""`danlu explain` on tables: the attributions are checked, not just produced.

Completeness of IG (sum = f(x) - f(baseline) within 1%), exact Shapley values against
shap's Exact explainer, IG against Captum called by hand, faithfulness on
make_classification (informative columns first; removing them hurts more than removing
random ones), model randomisation (a re-initialised model's attributions do not correlate
with the trained one's), and the user errors, through the CLI in process.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, assert_user_error, make_mixed_frame, small_config

import danlu
from danlu.explain import explainer

pytest.importorskip("captum")
FIXTURES = REPO / "tests" / "fixtures" / "runs_v1"
INFORMATIVE = ["x0", "x1", "x2"]  # make_classification(shuffle=False): informative columns come first


def _train(root: Path, body: dict[str, Any]) -> Path:
    cfg = small_config(body, root / "runs")
    return danlu.train(cfg, progress="quiet").path


@pytest.fixture(scope="module")
def informative_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP on make_classification with 3 informative columns of 10 (x0, x1, x2)."""
    root = tmp_path_factory.mktemp("explain")
    params = {"n_samples": 600, "n_features": 10, "n_informative": 3, "n_redundant": 0}
    body = {
        "seed": 0,
        "data": {"source": "make_classification", "params": {**params, "shuffle": False, "random_state": 3}},
        "model": {"hidden": [32]},
        "train": {"epochs": 25, "batch_size": 32, "lr": 0.01},
    }
    return _train(root, body)


@pytest.fixture(scope="module")
def test_rows(informative_run: Path) -> pd.DataFrame:
    return explainer(informative_run).split("test")


def test_ig_adds_up_and_matches_captum_called_by_hand(informative_run: Path, test_rows: pd.DataFrame) -> None:
    from captum.attr import IntegratedGradients

    p = danlu.load(informative_run)
    out = p.explain(test_rows, method="ig")
    features = p.schema.features
    assert list(out.columns[:4]) == ["prediction", "target", "output", "baseline_output"]
    assert set(features) <= set(out.columns)
    # completeness, per row: within 1% of f(x) - f(baseline) on every row
    gap = out["output"] - out["baseline_output"]
    assert np.allclose(out[features].sum(axis=1), gap, rtol=0.01, atol=1e-6)
    assert (out["completeness_error"] <= 0.01).mean() >= 0.99
    # Captum by hand: the model in float64, the scaled inputs, the training rows' mean as baseline
    ex = explainer(informative_run)
    model = p.model.double()
    x = p.preprocessor.transform(test_rows)["x"].double()
    base = p.preprocessor.transform(ex.split("train"))["x"].double().mean(0)
    target = torch.tensor(out["target"].astype(int).to_numpy())
    for steps in sorted(out["steps"].unique()):
        rows = np.nonzero(out["steps"].to_numpy() == steps)[0]
        by_hand = IntegratedGradients(lambda z: model(x=z)).attribute(
            x[rows],
            baselines=base.expand(len(rows), -1),
            target=target[rows],
            n_steps=int(steps),
            method="gausslegendre" if steps <= 64 else "riemann_trapezoid",  # attribution.ig_method
        )
        np.testing.assert_allclose(out[features].to_numpy()[rows], by_hand.detach().numpy(), atol=1e-9)


@pytest.mark.slow  # importing shap alone takes seconds
def test_exact_shapley_equals_shap_exact_explainer(informative_run: Path, test_rows: pd.DataFrame) -> None:
    shap = pytest.importorskip("shap")
    ex = explainer(informative_run)
    rows = test_rows.iloc[:5]
    ours = ex.explain(rows, method="shap", target="1").frame
    a = ex.attributable(rows, target="1")
    f = lambda z: ex.scores(torch.as_tensor(z)).detach().numpy()[:, 1]  # noqa: E731
    masker = shap.maskers.Independent(a.baseline.numpy()[None, :], max_samples=1)
    theirs = shap.explainers.Exact(f, masker)(a.inputs.numpy()).values
    np.testing.assert_allclose(ours[ex.pre.features].to_numpy(), theirs, atol=1e-6)
    assert ex.explain(rows, method="shap", target="1").info["shap"].startswith("exact")


def test_kernel_shap_with_every_coalition_is_exact(informative_run: Path, test_rows: pd.DataFrame) -> None:
    from danlu.explain import attribution as A

    a = explainer(informative_run).attributable(test_rows.iloc[:10])
    exact = A.exact_shapley(a).attributions
    np.testing.assert_allclose(A.kernel_shap(a, samples=1022).attributions, exact, atol=1e-8)
    sampled = A.kernel_shap(a, samples=256).attributions  # sampled: close, and it still adds up
    np.testing.assert_allclose(sampled.sum(axis=1), exact.sum(axis=1), atol=1e-8)
    assert np.corrcoef(sampled.ravel(), exact.ravel())[0, 1] > 0.9


def test_faithfulness_informative_columns_rank_first(informative_run: Path, test_rows: pd.DataFrame) -> None:
    ex = explainer(informative_run)
    e = ex.explain(test_rows, method="ig")
    top = list(e.importance.sort_values(ascending=False).index)
    assert set(top[:3]) == set(INFORMATIVE), e.importance
    # removing the top-k columns (set to the baseline) costs more accuracy than k random ones
    a = ex.attributable(test_rows)
    y = ex.pre.transform_target(test_rows).numpy()
    names = a.names

    def accuracy(removed: list[str]) -> float:
        keep = torch.tensor([[n not in removed for n in names]])
        z = torch.where(a.column_mask(keep), a.inputs, a.baseline)
        return float((ex.scores(z).argmax(1).numpy() == y).mean())

    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        random = np.mean([accuracy(list(rng.choice(names, k, replace=False))) for _ in range(20)])
        assert accuracy(top[:k]) < random, (k, accuracy(top[:k]), random)


@pytest.mark.slow  # five re-initialised models, whose IG needs many steps
def test_randomised_model_gets_other_attributions(informative_run: Path, test_rows: pd.DataFrame) -> None:
    """Adebayo et al.'s model randomisation check: re-initialised weights, other attributions
    (rank correlation of every row's per-feature attributions; averaged over 5 re-initialisations,
    since with 10 features one draw's correlation alone varies by about 0.3)."""
    from scipy.stats import spearmanr

    trained, test_rows = danlu.load(informative_run), test_rows.iloc[:40]
    features = trained.schema.features
    a = trained.explain(test_rows, target="1")[features].to_numpy().ravel()
    again = danlu.load(informative_run).explain(test_rows, target="1")[features].to_numpy().ravel()
    assert spearmanr(a, again).statistic == pytest.approx(1.0)  # the same weights: the same ranks
    rhos = []
    for seed in range(5):
        shuffled = danlu.load(informative_run)
        torch.manual_seed(seed)
        for m in shuffled.model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        b = shuffled.explain(test_rows, target="1")[features].to_numpy().ravel()
        rhos.append(spearmanr(a, b).statistic)
    assert np.mean(rhos) < 0.3, rhos


def test_categories_are_attributed_to_their_columns(tmp_path: Path) -> None:
    """One-hot columns and embeddings are summed back to the user's column; completeness holds."""
    csv = tmp_path / "mixed.csv"
    make_mixed_frame(200).to_csv(csv, index=False)
    for encoding in ("onehot", "embedding"):
        body = {"data": {"path": str(csv), "target": "label", "encoding": encoding}, "model": {"hidden": [8]}}
        run = _train(tmp_path / encoding, body)
        p = danlu.load(run)
        out = p.explain(csv_rows := pd.read_csv(csv).iloc[:30], method="ig")
        assert [c for c in out.columns if c in csv_rows.columns] == ["age", "income", "color", "size"]
        assert (out["completeness_error"] <= 0.01).all()
        shap_out = p.explain(csv_rows, method="shap")  # 4 columns: exact, adds up exactly
        gap = shap_out["output"] - shap_out["baseline_output"]
        np.testing.assert_allclose(shap_out[["age", "income", "color", "size"]].sum(axis=1), gap, atol=1e-9)


def test_cli_writes_attributions_and_a_report_section(
    informative_run: Path, test_rows: pd.DataFrame, invoke_cli: Any, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(informative_run, run)
    rows = tmp_path / "rows.csv"
    test_rows.drop(columns=["target"]).iloc[:15].to_csv(rows, index=False)
    r = invoke_cli("explain", run, "--input", rows, "--output", tmp_path / "attr.csv")
    assert r.exit_code == 0, r.stderr
    assert "completeness within 1% on 100.0% of rows" in r.stderr
    out = pd.read_csv(tmp_path / "attr.csv")
    assert len(out) == 15 and {"prediction", "x0", "x9", "completeness_error", "steps"} <= set(out.columns)
    r = invoke_cli("explain", run, "--split", "test", "--method", "permutation")
    assert r.exit_code == 0, r.stderr
    table = pd.read_csv(__import__("io").StringIO(r.stdout))
    assert set(table.nlargest(2, "importance")["feature"]) <= set(INFORMATIVE)
    report = (run / "report.md").read_text()
    assert (
        "## Explanations: ig (rows.csv)" in report and "## Explanations: permutation (test split)" in report
    )
    assert (run / "plots" / "explain_ig.png").stat().st_size > 0
    r = invoke_cli("explain", run, "--input", rows, "--method", "occlusion", "--no-report")
    assert r.exit_code == 0 and report == (run / "report.md").read_text()
    r = invoke_cli("explain", run, "--input", rows)  # again: the section is replaced, not added
    assert (run / "report.md").read_text().count("## Explanations: ig") == 1


def test_old_regression_run_is_explained_in_target_units(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(FIXTURES, tmp_path / "runs_v1")
    monkeypatch.chdir(tmp_path / "runs_v1")  # its data paths are relative to this folder
    p = danlu.load("tabular_regression")
    rows = pd.read_csv(next(Path("data").glob("regression*.csv")))
    out = p.explain(rows.iloc[:20])
    np.testing.assert_allclose(out["output"], p.predict(rows.iloc[:20]), rtol=1e-5, atol=1e-5)
    features = p.schema.features
    np.testing.assert_allclose(
        out[features].sum(axis=1), out["output"] - out["baseline_output"], rtol=0.01, atol=1e-6
    )


# --------------------------------------------------------------------------- text, images, GPT
@pytest.fixture
def old_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of runs_v1 as the current folder (its data paths are relative to it)."""
    shutil.copytree(FIXTURES, tmp_path / "runs_v1")
    monkeypatch.chdir(tmp_path / "runs_v1")
    return tmp_path / "runs_v1"


def test_text_tokens_add_up_and_make_a_page(old_runs: Path, invoke_cli: Any) -> None:
    p = danlu.load("text")
    out = p.explain(["great food", "lovely staff but awful food"], method="ig")
    assert len(out[out["row"] == 1]) == 5  # a word tokenizer: one token per word ([UNK] for new ones)
    per_row = out.groupby("row").agg(
        total=("attribution", "sum"), gap=("output", "first"), base=("baseline_output", "first")
    )
    np.testing.assert_allclose(per_row["total"], per_row["gap"] - per_row["base"], rtol=0.01, atol=1e-6)
    r = invoke_cli("explain", "text", "--input", "data/sentences.csv", "-o", "page.html", cwd=old_runs)
    assert r.exit_code == 0, r.stderr
    page = (old_runs / "page.html").read_text()
    assert "great" in page and "top tokens" in page
    assert (old_runs / "text" / "plots" / "explain_ig.html").is_file()
    assert "explain_ig.html" in (old_runs / "text" / "report.md").read_text()
    r = invoke_cli("explain", "text", "--input", "data/sentences.csv", "--method", "shap", cwd=old_runs)
    assert_user_error(r, "--method shap: not supported for text runs; text runs support: ig, occlusion")


def test_images_get_saliency_pngs(old_runs: Path, invoke_cli: Any) -> None:
    r = invoke_cli("explain", "image", "-i", "data/shapes/dark", "--no-report", "-o", "s.csv", cwd=old_runs)
    assert r.exit_code == 0, r.stderr
    out = pd.read_csv(old_runs / "s.csv")  # IG: completeness per image, no PNGs without the report
    assert len(out) == 10 and (out["completeness_error"] <= 0.01).all() and "saliency_png" not in out
    for method in ("ig", "occlusion"):
        r = invoke_cli(
            "explain",
            "image",
            "-i",
            "data/shapes/light/00.png",
            "--method",
            method,
            "-o",
            "s.csv",
            cwd=old_runs,
        )
        assert r.exit_code == 0, r.stderr
        assert Path(pd.read_csv(old_runs / "s.csv")["saliency_png"][0]).stat().st_size > 0
    assert "explain_occlusion/0.png" in (old_runs / "image" / "report.md").read_text()


def test_audio_classifier_occlusion_over_time(old_runs: Path, invoke_cli: Any) -> None:
    r = invoke_cli(
        "explain", "audio_classification", "-i", "data/tones/low/0.wav", "-o", "a.csv", cwd=old_runs
    )
    assert r.exit_code == 0, r.stderr
    out = pd.read_csv(old_runs / "a.csv")
    assert (
        out.groupby("row").size().eq(20).all() and out["occlusion_png"].map(lambda f: Path(f).is_file()).all()
    )
    r = invoke_cli("explain", "audio_classification", "-i", "data/tones/low", "--method", "ig", cwd=old_runs)
    assert_user_error(r, "--method ig: not supported for audio runs; audio runs support: occlusion")


def test_gpt_prompt_tokens_explain_the_next_token(old_runs: Path, invoke_cli: Any) -> None:
    (old_runs / "prompts.txt").write_text("the dog\nred mat sat\n")
    r = invoke_cli("explain", "language_model", "--input", "prompts.txt", "-o", "gpt.csv", cwd=old_runs)
    assert r.exit_code == 0, r.stderr
    out = pd.read_csv(old_runs / "gpt.csv", keep_default_na=False)
    assert list(out[out["row"] == 0]["token"]) == list("the dog")  # a character-level model
    per_row = out.groupby("row").agg(
        total=("attribution", "sum"), f=("output", "first"), b=("baseline_output", "first")
    )
    np.testing.assert_allclose(per_row["total"], per_row["f"] - per_row["b"], rtol=0.01, atol=1e-6)
    r = invoke_cli(
        "explain", "language_model", "--input", "prompts.txt", "--method", "occlusion", cwd=old_runs
    )
    assert_user_error(r, "corpus runs support: ig")


# --------------------------------------------------------------------------- user errors
def test_unsupported_method_says_which_are(informative_run: Path, invoke_cli: Any, tmp_path: Path) -> None:
    r = invoke_cli(
        "explain", informative_run, "--split", "test", "--method", "lime", "-o", tmp_path / "a.csv"
    )
    assert_user_error(r, "--method lime", "tabular runs support: ig, shap, occlusion, permutation")
    assert not (tmp_path / "a.csv").exists()


def test_kind_without_explanations_says_so(invoke_cli: Any, tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "multimodal", tmp_path / "multimodal")
    r = invoke_cli("explain", tmp_path / "multimodal", "--input", tmp_path / "x.csv")
    assert_user_error(r, "cannot explain multimodal runs", "kinds that can: audio, corpus, image, ")
    shutil.copytree(FIXTURES / "speech_recognition", tmp_path / "speech")
    r = invoke_cli("explain", tmp_path / "speech", "--input", tmp_path / "x.csv")
    assert_user_error(r, "speech recognition runs cannot be explained yet; audio classifiers can")


def test_unknown_target_class(informative_run: Path, invoke_cli: Any, tmp_path: Path) -> None:
    r = invoke_cli("explain", informative_run, "--split", "test", "--target", "7", "-o", tmp_path / "a.csv")
    assert_user_error(r, "--target '7' is not a class of this model; its classes: 0, 1")
    assert not (tmp_path / "a.csv").exists()


def test_input_missing_training_columns(informative_run: Path, invoke_cli: Any, tmp_path: Path) -> None:
    rows = explainer(informative_run).split("test").drop(columns=["x3"])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    r = invoke_cli("explain", informative_run, "--input", tmp_path / "rows.csv", "-o", tmp_path / "a.csv")
    assert_user_error(r, "rows.csv", "missing column 'x3'", "trained on: x0, x1")
    assert not (tmp_path / "a.csv").exists()


def test_permutation_needs_the_target(informative_run: Path, invoke_cli: Any, tmp_path: Path) -> None:
    explainer(informative_run).split("test").drop(columns=["target"]).to_csv(
        tmp_path / "rows.csv", index=False
    )
    r = invoke_cli("explain", informative_run, "-i", tmp_path / "rows.csv", "--method", "permutation")
    assert_user_error(r, "missing target column 'target'")


# --------------------------------------------------------------------------- quality bars (real data)
@pytest.mark.slow
@pytest.mark.parametrize("example", ["tutorial.yaml", "breast_cancer.yaml"])
def test_ig_completeness_on_the_examples_test_splits(example: str, tmp_path: Path) -> None:
    run = danlu.train(
        REPO / "examples" / example,
        {"output.dir": str(tmp_path), "train.epochs": 40, "eval.plots": False},
        progress="quiet",
    )
    e = explainer(run.path).explain(explainer(run.path).split("test"), method="ig", where="test split")
    assert e.info["completeness_within_1pct"] >= 0.99, e.info
