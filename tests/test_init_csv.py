"""`danlu init csv FILE`: a config made for the file from the roles of its columns, end to
end through the CLI; and the training-time checks that keep a hand-written config from
one-hot encoding free text or an identifier without a word."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_user_error, make_mixed_frame

from danlu.config import DataConfig
from danlu.data.tabular import TabularPreprocessor, column_role

REPO = Path(__file__).resolve().parents[1]
SENTIMENT = REPO.parent / "shared" / "data" / "sentiment" / "train.csv"
WORDS = ["good", "bad", "slow", "fast", "friendly", "rude", "cheap", "pricey", "clean", "dirty", "late"]


def _ok(result) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr
    return result.stdout


def _run(stdout: str, root: Path) -> Path:
    run = re.search(r"^run folder: (.+)$", stdout, re.MULTILINE)
    assert run, stdout
    return root / run.group(1).strip()


def _test_accuracy(run: Path) -> float:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test"
    return metrics["metrics"]["accuracy"]


def _roles(config_text: str) -> dict[str, str]:
    """column -> role, from the comment table `danlu init csv` writes under data:."""
    table = re.findall(r"^  #   (\S+) +(numeric|categorical|text|identifier|date|empty) ", config_text, re.M)
    return dict(table)


def make_customers(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Every role in one file: an integer id, a string code per row, a signup date, a number,
    a category, a free-text note, and a label that depends on the number and the category."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, n).round(1)
    plan = rng.choice(["basic", "plus", "pro"], n)
    label = np.where((age > 40) ^ (plan == "pro"), "stay", "leave")
    return pd.DataFrame(
        {
            "customer_id": rng.permutation(np.arange(1, n + 1)),
            "code": [f"C{rng.integers(10**8):08d}" for _ in range(n)],
            "signup": pd.date_range("2021-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
            "age": age,
            "plan": plan,
            "note": [" ".join(rng.choice(WORDS, rng.integers(4, 12))) for _ in range(n)],
            "label": label,
        }
    )


# --------------------------------------------------------------------------- init csv FILE
@pytest.mark.slow
def test_roles_of_every_kind_with_warnings_then_train(run_cli, tmp_path):
    make_customers().to_csv(tmp_path / "customers.csv", index=False)
    r = run_cli("init", "csv", "customers.csv", "-o", "c.yaml")
    _ok(r)
    text = (tmp_path / "c.yaml").read_text()
    assert _roles(text) == {
        "customer_id": "identifier",
        "code": "identifier",
        "signup": "date",
        "age": "numeric",
        "plan": "categorical",
        "note": "text",
    }
    # one warning line per doubtful column: the two identifiers and the free text
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 3, r.stderr
    for column, what in (("customer_id", "identifier"), ("code", "identifier"), ("note", "free text")):
        assert any(f"'{column}'" in w and what in w for w in warned), r.stderr
    cfg = yaml.safe_load(text)
    assert cfg["data"]["target"] == "label"
    inputs = cfg["data"]["inputs"]  # the note is read by a text encoder, the rest by an MLP
    assert inputs["table"] == {"kind": "tabular", "columns": ["age", "plan"], "categorical": ["plan"]}
    assert inputs["note"]["kind"] == "text" and inputs["note"]["column"] == "note"
    assert set(cfg["model"]["encoders"]) == {"table", "note"}
    out = _ok(run_cli("train", "c.yaml", "--set", "train.epochs=2", "--set", "eval.plots=false", "-q"))
    assert 0.0 <= _test_accuracy(_run(out, tmp_path)) <= 1.0


@pytest.mark.slow
def test_table_without_text_excludes_id_and_date_and_trains(run_cli, tmp_path):
    df = make_customers().drop(columns=["note"])
    df.loc[[3, 17], "age"] = np.nan  # a gap: the config imputes rather than failing at training
    df.to_csv(tmp_path / "customers.csv", index=False)
    r = run_cli("init", "csv", "customers.csv", "--target", "label")
    cfg = yaml.safe_load(_ok(r))
    data = cfg["data"]
    assert data["categorical"] == ["plan"]
    assert data["exclude"] == ["customer_id", "code", "signup"]
    assert data["features"] is None and data["missing"] == "impute"
    assert "inputs" not in data and cfg["model"]["type"] == "mlp"
    (tmp_path / "c.yaml").write_text(r.stdout)
    out = _ok(run_cli("train", "c.yaml", "--set", "train.epochs=30", "--set", "eval.plots=false", "-q"))
    run = _run(out, tmp_path)
    schema = json.loads((run / "model.json").read_text())["schema"]
    assert schema["features"] == ["age", "plan"]  # no identifier, no date
    assert schema["n_inputs"] == 1 + 3  # age + one-hot plan: not a column per customer
    # label = (age > 40) xor (plan == pro): learnable from the two inputs alone
    assert _test_accuracy(run) > 0.75


@pytest.mark.slow
@pytest.mark.skipif(not SENTIMENT.is_file(), reason="needs ../shared/data/sentiment/train.csv")
def test_sentiment_csv_trains_a_text_model(run_cli, tmp_path):
    """The issue's case: `init csv` on a review CSV gave a config that one-hot encoded the
    text (test accuracy 0.504). Now the text column is read by a text encoder."""
    r = run_cli("init", "csv", SENTIMENT, "-o", "s.yaml")
    _ok(r)
    assert re.search(r"warning: .*'text' looks like free text", r.stderr)
    text = (tmp_path / "s.yaml").read_text()
    assert _roles(text) == {"text": "text", "source": "categorical"}
    assert yaml.safe_load(text)["data"]["inputs"]["text"]["kind"] == "text"
    out = _ok(run_cli("train", "s.yaml", "--set", "train.epochs=4", "--set", "eval.plots=false", "-q"))
    assert _test_accuracy(_run(out, tmp_path)) > 0.7  # chance is 0.5


def test_target_guess_and_errors(invoke_cli, tmp_path):
    make_mixed_frame().rename(columns={"label": "animal"}).to_csv(tmp_path / "m.csv", index=False)
    r = invoke_cli("init", "csv", "m.csv")
    assert r.exit_code == 0, r.stderr
    assert yaml.safe_load(r.stdout)["data"]["target"] == "animal"  # no usual name: the last column
    assert "guessed: the last column" in r.stdout
    r = invoke_cli("init", "csv", "m.csv", "--target", "anmal")
    assert_user_error(r, "--target: column 'anmal' is not in m.csv", "did you mean 'animal'")
    r = invoke_cli("init", "tabular", "m.csv")
    assert_user_error(r, "danlu init csv FILE")
    r = invoke_cli("init", "csv", "absent.csv")
    assert_user_error(r, "absent.csv: data file not found")


def test_init_reads_only_a_sample(tmp_path, monkeypatch):
    from danlu import templates

    monkeypatch.setattr(templates, "SAMPLE_ROWS", 50)
    make_customers(n=200).to_csv(tmp_path / "c.csv", index=False)
    text, _ = templates.csv_config(str(tmp_path / "c.csv"))
    assert "inferred from its first 50 rows" in text


# --------------------------------------------------------------------------- column_role
@pytest.mark.parametrize(
    ("values", "name", "role"),
    [
        (list(range(100, 200)), "row", "identifier"),  # integers counting up
        (list(np.random.default_rng(0).permutation(100)), "user_id", "identifier"),
        (list(np.random.default_rng(0).integers(0, 10**6, 100)), "income", "numeric"),  # unique, not an id
        ([f"u-{i:04x}" for i in range(100)], "who", "identifier"),
        (["red", "green", "blue", "red"] * 25, "color", "categorical"),
        (["2024-03-01 10:00", "2024/03/02", "Mar 3 2024", "2024-03-04"] * 25, "when", "date"),
        (["May", "June", "July"] * 30, "month", "categorical"),  # no digits: not dates
        (["18-25", "26-35", "36-50", "1-2"] * 25, "band", "categorical"),  # no year: not dates
        (["2024-01-01", "2024-01-02T00:00+05:00", "1/2/2024"] * 30, "t", "date"),  # mixed zones too
        ([f"the {w} one number {i}" for i, w in enumerate(WORDS * 7)], "review", "text"),
        ([np.nan] * 30, "blank", "empty"),
        ([1.5, 2.0, 2.5] * 30, "x", "numeric"),
    ],
)
def test_column_role(values, name, role):
    assert column_role(pd.Series(values), name)[0] == role


# --------------------------------------------------------------------------- a hand-written config
def _mixed_with(tmp_path: Path, **extra) -> Path:
    df = make_mixed_frame(n=120)
    for column, values in extra.items():
        df[column] = values
    path = tmp_path / "mixed.csv"
    df.to_csv(path, index=False)
    return path


def test_free_text_is_refused_as_a_category(invoke_cli, write_config, tmp_path):
    rng = np.random.default_rng(1)
    csv = _mixed_with(tmp_path, review=[" ".join(rng.choice(WORDS, 8)) for _ in range(120)])
    write_config({"data": {"path": str(csv), "target": "label"}})
    r = invoke_cli("train", "config.yaml")
    # refused before the run folder
    assert_user_error(
        r, "column 'review' looks like free text", "data.exclude", "data.text", runs_dir=tmp_path / "runs"
    )


@pytest.mark.slow
def test_identifier_category_warns_and_exclude_removes_it(run_cli, write_config, tmp_path):
    csv = _mixed_with(tmp_path, ref=[f"R{i:05d}" for i in range(120)])
    write_config({"data": {"path": str(csv), "target": "label"}})
    r = run_cli("train", "config.yaml", "-q")
    _ok(r)
    assert re.search(r"warning: .*categorical column 'ref' looks like an identifier.*data.exclude", r.stderr)
    write_config({"data": {"path": str(csv), "target": "label", "exclude": ["ref"]}}, name="ex.yaml")
    r = run_cli("train", "ex.yaml", "-q")
    assert "warning" not in _ok(r) + r.stderr
    run = _run(r.stdout, tmp_path)
    assert "ref" not in json.loads((run / "model.json").read_text())["schema"]["features"]


def test_exclude_errors(invoke_cli, write_config, mixed_csv):
    write_config({"data": {"path": str(mixed_csv), "target": "label", "exclude": ["colour"]}})
    r = invoke_cli("train", "config.yaml")
    assert_user_error(r, "data.exclude names column 'colour'", "did you mean 'color'")
    write_config({"data": {"path": str(mixed_csv), "target": "label", "exclude": ["label"]}})
    assert_user_error(invoke_cli("train", "config.yaml"), "data.exclude: 'label' is the target")


def test_exclude_with_inputs_is_an_error():
    with pytest.raises(ValueError, match="data.inputs replaces data.exclude"):
        DataConfig(path="x.csv", inputs={"t": {"kind": "tabular", "columns": ["a"]}}, exclude=["b"])


# --------------------------------------------------------------------------- warnings
def test_unseen_category_raises_no_pandas_warning():
    """pd.Categorical with values outside its categories warned (Pandas4Warning, a
    DeprecationWarning): it will raise in pandas 4. Unseen categories are still all zeros."""
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "c": ["a", "b", "a", "b"], "y": [0, 1, 0, 1]})
    cfg = DataConfig(path="x.csv", target="y")
    pre = TabularPreprocessor.fit(train, cfg, "classification", ["y"], "t", ["x", "c"], ["c"])
    new = pd.DataFrame({"x": [1.0, 2.0], "c": ["b", "zebra"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = pre.transform(new)["x"].numpy()
    assert x[:, 1:].tolist() == [[0.0, 1.0], [0.0, 0.0]]  # b one-hot; zebra (unseen) all zeros
