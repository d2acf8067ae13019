"""Multimodal fusion: fusion layers against hand computations, order invariance, missing
inputs (errors and allow_missing), mismatched names, the CLI end to end, the example's bar
(fused beats each single input), and images as one of the inputs."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import assert_user_error

import danlu
from danlu import config, data, models
from danlu.data.batches import batches
from danlu.data.multimodal import MultimodalSchema
from danlu.errors import DanluError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
from make_multimodal import make  # noqa: E402

ENCODERS = {
    "account": {"type": "mlp", "hidden": [8]},
    "review": {"type": "rnn", "cell": "gru", "embedding_dim": 8, "hidden": 8},
    "plan": {"type": "mlp", "hidden": [4]},
}


def frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "review": [" ".join(rng.choice(["good", "bad", "app", "very", "plan"], 4)) for _ in range(n)],
            "usage": rng.normal(5, 2, n).round(2),
            "tenure": rng.integers(1, 40, n),
            "tier": rng.choice(["free", "pro", "team"], n),
            "label": rng.choice(["a", "b", "c"], n),
        }
    )


def body(csv: Path, inputs: list[str], fusion: str = "concat", **data_extra) -> dict:
    spec = {
        "account": {"kind": "tabular", "columns": ["usage", "tenure"]},
        "review": {"kind": "text", "column": "review", "tokenizer": "word", "max_length": 8},
        "plan": {"kind": "tabular", "columns": ["tier"]},
    }
    return {
        "data": {"path": str(csv), "target": "label", "inputs": {n: spec[n] for n in inputs}, **data_extra},
        "model": {
            "type": "fusion",
            "fusion": fusion,
            "dim": 8,
            "heads": 2,
            "hidden": [8],
            "dropout": 0.0,
            "encoders": {n: ENCODERS[n] for n in inputs},
        },
        "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
        "eval": {"plots": False},
    }


def prepared_model(csv: Path, inputs: list[str], fusion: str, seed: int = 0, **data_extra):
    cfg = config.load(body(csv, inputs, fusion, **data_extra))
    prep = data.build(cfg.data, "auto", 0, cfg.model)
    torch.manual_seed(seed)
    model = models.build(cfg.model, prep.schema, prep.schema.n_classes).eval()
    return prep, model


def one_batch(split, n: int = 16) -> tuple[dict, torch.Tensor]:
    return next(iter(batches(split, n, shuffle=False, seed=0).epoch(0)))


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    frame().to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- fusion layers
@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_fusion_output_shapes_and_named_inputs(csv: Path, fusion: str) -> None:
    prep, model = prepared_model(csv, ["account", "review", "plan"], fusion)
    x, y = one_batch(prep.splits["train"])
    # each input reaches the model under its own name; token ids are cut to the batch's longest row
    assert {"account.x", "review.input_ids", "review.attention_mask", "plan.x"} == set(x)
    assert x["review.input_ids"].shape[1] == int(x["review.attention_mask"].sum(1).max())
    assert x["plan.x"].shape == (16, 3)  # one-hot of free/pro/team
    feats = model.features(**x)
    assert [tuple(f.shape) for f in feats.values()] == [(16, 8)] * 3
    out = model(**x)
    assert out.shape == (16, 3) and torch.isfinite(out).all()  # three classes, from the data
    head_in = model.head[0].in_features
    assert head_in == (24 if fusion == "concat" else 8)


def test_gated_fusion_matches_a_hand_computation(csv: Path) -> None:
    _, model = prepared_model(csv, ["account", "review", "plan"], "gated")
    torch.manual_seed(1)
    feats = {n: torch.randn(5, 8) for n in ["account", "review", "plan"]}
    mean = sum(feats.values()) / 3
    want = torch.zeros(5, 8)
    for n, f in feats.items():
        w, b = model.fusion.gates[n].weight, model.fusion.gates[n].bias
        z = np.concatenate([f.numpy(), mean.numpy()], axis=1) @ w.detach().numpy().T + b.detach().numpy()
        want += torch.from_numpy(1 / (1 + np.exp(-z))) * f
    torch.testing.assert_close(model.fusion(feats), want, atol=1e-5, rtol=1e-5)


def test_attention_pooling_matches_a_hand_computation(csv: Path) -> None:
    _, model = prepared_model(csv, ["account", "review", "plan"], "attention")
    fusion = model.fusion
    torch.manual_seed(2)
    feats = {n: torch.randn(3, 8) for n in ["account", "review", "plan"]}
    tokens = torch.stack([f + fusion.embed[n] for n, f in feats.items()], 1)
    h = fusion.norm(fusion.mix(tokens, None)).detach().numpy()
    kv = h @ fusion.kv.weight.detach().numpy().T + fusion.kv.bias.detach().numpy()
    k, v = kv[..., :8], kv[..., 8:]
    q = fusion.query.detach().numpy()
    pooled = np.zeros((3, 8))
    for head in range(2):  # per head: softmax(q . k / sqrt(d_head)) weighted sum of v
        s = slice(4 * head, 4 * head + 4)
        scores = np.einsum("d,btd->bt", q[s], k[..., s]) / math.sqrt(4)
        weights = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
        pooled[:, s] = np.einsum("bt,btd->bd", weights, v[..., s])
    want = pooled @ fusion.proj.weight.detach().numpy().T + fusion.proj.bias.detach().numpy()
    torch.testing.assert_close(fusion(feats), torch.from_numpy(want).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["gated", "attention"])
def test_gated_and_attention_fusion_do_not_depend_on_the_order_of_inputs(csv: Path, fusion: str) -> None:
    prep_a, a = prepared_model(csv, ["account", "review", "plan"], fusion, seed=0)
    prep_b, b = prepared_model(csv, ["plan", "account", "review"], fusion, seed=5)
    assert list(b.encoders) == ["plan", "account", "review"]
    b.load_state_dict(a.state_dict())  # parameters are named by input, not by position
    x, _ = one_batch(prep_a.splits["test"])
    x_b, _ = one_batch(prep_b.splits["test"])
    assert all(torch.equal(x[k], x_b[k]) for k in x)
    with torch.no_grad():
        out_a, out_b = a(**x), b(**x_b)
    torch.testing.assert_close(out_a, out_b, atol=1e-6, rtol=1e-5)
    assert out_a.std(0).min() > 0  # the rows do differ: the check is not vacuous


# --------------------------------------------------------------------------- bad input
def test_mismatched_input_names_are_one_line_listing_both(csv: Path, tmp_path: Path, invoke_cli) -> None:
    cfg = body(csv, ["account", "review"])
    cfg["model"]["encoders"] = {"account": ENCODERS["account"], "reviews": ENCODERS["review"]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    line = assert_user_error(invoke_cli("train", path), "data.inputs has {account, review}")
    assert "model.encoders has {account, reviews}" in line
    assert "no encoder for 'review'" in line and "no input named 'reviews'" in line
    assert not (tmp_path / "runs").exists()


def test_a_model_or_encoder_that_cannot_read_the_inputs(csv: Path) -> None:
    cfg = body(csv, ["account", "review"])
    cfg["model"]["encoders"]["review"] = {"type": "cnn"}
    with pytest.raises(
        DanluError,
        match=r"model.encoders.review.type: cnn cannot encode text input 'review';"
        r" use rnn or transformer or pretrained_encoder",
    ):
        danlu.train(cfg, progress="quiet")
    cfg = body(csv, ["account", "review"])
    cfg["model"] = {"type": "mlp"}
    with pytest.raises(DanluError, match=r"model.type: 'mlp' reads one input, but data.inputs declares 2"):
        danlu.train(cfg, progress="quiet")
    cfg = body(csv, ["account"])
    del cfg["data"]["inputs"]
    cfg["data"]["features"] = ["usage", "tenure"]  # the review text would be refused as a category first
    with pytest.raises(
        DanluError, match="model.type fusion combines several inputs: declare them under data.inputs"
    ):
        danlu.train(cfg, progress="quiet")
    with pytest.raises(DanluError, match=r"data.inputs.photo.kind: 'video' is not valid"):
        config.load({"data": {"path": "x.csv", "inputs": {"photo": {"kind": "video"}}}})
    with pytest.raises(
        DanluError, match=r"allow_missing: 'reveiw' is not an input \(did you mean 'review'\?\)"
    ):
        config.load(
            {"data": {"path": "x.csv", "allow_missing": ["reveiw"], "inputs": {"review": {"kind": "text"}}}}
        )


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("review", "   ", "row 7 has no text for input 'review' (column 'review' is empty)"),
        ("tenure", None, "row 7 has no value for input 'account' (column 'tenure' is empty)"),
    ],
)
def test_a_missing_input_in_a_row_names_the_row_and_the_input(
    tmp_path: Path, column: str, value: object, expected: str
) -> None:
    df = frame()
    df[column] = df[column].astype(object)
    df.loc[6, column] = value  # the file's 7th data row
    path = tmp_path / "rows.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DanluError) as e:
        danlu.train(body(path, ["account", "review"]), progress="quiet")
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert "data.allow_missing" in str(e.value)


def test_allow_missing_uses_a_learned_vector_and_predicts_rows_without_the_input(tmp_path: Path) -> None:
    df = frame(80)
    df.loc[[3, 10, 50], "review"] = ""
    df.loc[[4, 60], "usage"] = np.nan
    path = tmp_path / "rows.csv"
    df.to_csv(path, index=False)
    cfg = body(path, ["account", "review"], allow_missing=["review", "account"])
    cfg["output"] = {"dir": str(tmp_path / "runs")}
    run = danlu.train(cfg, progress="quiet")
    predictor = run.load()
    assert predictor.schema.missing == ["review", "account"]
    saved = json.loads((run.path / "model.json").read_text())["schema"]
    assert MultimodalSchema.from_dict(saved) == predictor.schema
    rows = pd.DataFrame(
        {
            "review": ["good app", None, "bad plan"],
            "usage": [5.0, 4.0, None],
            "tenure": [3, 30, 12],
            "label": ["a", "b", "c"],
        }
    )
    x, _ = one_batch(predictor.preprocessor.dataset(rows, "input", with_target=False), 3)
    assert x["review.present"].tolist() == [True, False, True]
    assert x["account.present"].tolist() == [True, True, False]
    feats = predictor.model.features(**x)
    torch.testing.assert_close(feats["review"][1], predictor.model.missing["review"].detach())
    torch.testing.assert_close(feats["account"][2], predictor.model.missing["account"].detach())
    assert not torch.allclose(feats["review"][0], feats["review"][1])
    proba = predictor.predict_proba(rows)
    assert proba.shape == (3, 3) and np.allclose(proba.sum(1), 1.0, atol=1e-5)


def test_images_from_disk_or_memory_give_the_same_batches_and_resume_mid_epoch(tmp_path: Path) -> None:
    pytest.importorskip("PIL", reason="image inputs need Pillow (pip install 'danlu[images]')")
    csv = make(tmp_path, rows=40, seed=3, images=True)
    splits = {}
    for in_memory in (True, False):
        cfg = config.load(
            {
                "data": {
                    "path": str(csv),
                    "target": "renews",
                    "split": {"val": 0.0, "test": 0.25},
                    "inputs": {
                        "account": {"kind": "tabular", "columns": ["usage"]},
                        "review": {"kind": "text", "column": "review", "tokenizer": "word"},
                        "photo": {
                            "kind": "image",
                            "column": "photo",
                            "size": 16,
                            "in_memory": in_memory,
                            "workers": 0,
                            "augment": {"hflip": 0.5, "brightness": 0.2},
                        },
                    },
                },
                "model": {
                    "type": "fusion",
                    "encoders": {"account": {}, "review": {"type": "rnn"}, "photo": {"type": "cnn"}},
                },
            }
        )
        splits[in_memory] = data.build(cfg.data, "auto", 0, cfg.model).splits["train"]
    assert splits[False].parts["photo"].files and splits[True].parts["photo"].images is not None
    memory, disk = (batches(splits[m], 8, shuffle=True, seed=7) for m in (True, False))
    assert len(memory) == len(disk) == 4
    full = list(memory.epoch(1))
    for (x, y), (x2, y2) in zip(full, disk.epoch(1), strict=True):
        assert x.keys() == x2.keys() and torch.equal(y, y2)
        for k in x:
            torch.testing.assert_close(x[k], x2[k])
    resumed = list(disk.epoch(1, start=2))
    assert len(resumed) == 2
    for (x, y), (x2, y2) in zip(full[2:], resumed, strict=True):
        assert torch.equal(y, y2) and torch.equal(x["photo.x"], x2["photo.x"])
        assert torch.equal(x["review.input_ids"], x2["review.input_ids"])
    # another epoch is another order
    assert not torch.equal(torch.cat([y for _, y in memory.epoch(2)]), torch.cat([y for _, y in full]))


def test_a_pretrained_encoder_reads_the_text_input(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="pretrained encoders need transformers")
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "app", "very", "plan"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    config_ = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    transformers.BertModel(config_).save_pretrained(str(folder))
    path = tmp_path / "rows.csv"
    frame(48).to_csv(path, index=False)
    cfg = body(path, ["account", "review"], fusion="attention")
    cfg["data"]["inputs"]["review"] = {"kind": "text", "column": "review", "max_length": 16}
    cfg["model"]["encoders"]["review"] = {
        "type": "pretrained_encoder",
        "path": str(folder),
        "pooling": "mean",
    }
    cfg["train"]["epochs"] = 1
    cfg["output"] = {"dir": str(tmp_path / "runs")}
    run = danlu.train(cfg, progress="quiet")
    assert (run.path / "tokenizer-review.json").is_file()
    predictor = run.load()
    rows = frame(48).head(5)
    x, _ = one_batch(predictor.preprocessor.dataset(rows, "input", with_target=False), 5)
    want = tokenizer(list(rows["review"]), padding=True, return_tensors="pt")
    assert torch.equal(x["review.input_ids"], want["input_ids"])  # the encoder's own tokenizer
    assert torch.equal(x["review.attention_mask"], want["attention_mask"])
    assert predictor.predict_proba(rows).shape == (5, 3)


# --------------------------------------------------------------------------- the example
@pytest.fixture(scope="module")
def example_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multimodal")
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_multimodal.py"), "--out", str(out), "--rows", "1200"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 1200 rows" in r.stdout
    return out / "rows.csv"


@pytest.mark.slow
def test_example_fused_beats_each_single_input_and_the_cli_round_trip(
    example_data: Path, tmp_path: Path, run_cli
) -> None:
    # fused: the example itself, through the CLI
    runs = tmp_path / "runs"
    r = run_cli(
        "train",
        EXAMPLES / "multimodal.yaml",
        "--set",
        f"data.path={example_data}",
        "--set",
        f"output.dir={runs}",
        "--set",
        "eval.plots=false",
    )
    assert r.returncode == 0, r.stderr
    (run,) = list(runs.iterdir())
    fused = json.loads((run / "metrics.json").read_text())["metrics"]["accuracy"]
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocessor"]["kind"] == "multimodal"
    assert set(meta["preprocessor"]["inputs"]) == {"account", "review"}
    assert (run / "tokenizer-review.json").is_file()

    # the same config with one input dropped
    base = yaml.safe_load((EXAMPLES / "multimodal.yaml").read_text())
    base["data"]["path"] = str(example_data)
    base["output"] = {"dir": str(tmp_path / "single")}
    base["eval"] = {"plots": False}
    single = {}
    for keep in ("account", "review"):
        cfg = json.loads(json.dumps(base))
        cfg["data"]["inputs"] = {keep: base["data"]["inputs"][keep]}
        cfg["model"]["encoders"] = {keep: base["model"]["encoders"][keep]}
        single[keep] = danlu.train(cfg, progress="quiet").metrics["metrics"]["accuracy"]
    # the review sets the usage threshold: alone, either input is right about 3 times in 4
    assert fused >= 0.88, (fused, single)
    print(f"accuracy: fused {fused:.3f}, {single}")
    assert fused > max(single.values()) + 0.1, (fused, single)

    # evaluate and predict from the run folder alone
    r = run_cli("evaluate", run)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "metrics.json").read_text())["metrics"]["accuracy"] == pytest.approx(fused)
    rows = pd.read_csv(example_data).head(40)
    rows.drop(columns="renews").to_csv(tmp_path / "new.csv", index=False)
    r = run_cli("predict", run, "--input", tmp_path / "new.csv", "--proba")
    assert r.returncode == 0, r.stderr
    preds = pd.read_csv(io.StringIO(r.stdout))
    assert list(preds.columns) == ["review", "usage", "tenure", "prediction", "proba_no", "proba_yes"]
    assert (preds["prediction"] == rows["renews"]).mean() >= 0.8
    api = danlu.load(run).predict(rows)
    assert list(api) == preds["prediction"].tolist()


@pytest.mark.slow
def test_images_as_one_input_end_to_end(tmp_path: Path, run_cli) -> None:
    pytest.importorskip("PIL", reason="image inputs need Pillow (pip install 'danlu[images]')")
    out = tmp_path / "data"
    csv = make(out, rows=300, seed=1, images=True)
    photo = {"kind": "image", "column": "photo", "size": 16, "workers": 0, "augment": {"hflip": 0.5}}
    cfg = {
        "name": "mm-images",
        "data": {
            "path": str(csv),
            "target": "renews",
            "split": {"val": 0.15, "test": 0.25},
            "inputs": {"account": {"kind": "tabular", "columns": ["usage", "tenure"]}, "photo": photo},
        },
        "model": {
            "type": "fusion",
            "fusion": "gated",
            "dim": 16,
            "hidden": [16],
            "encoders": {
                "account": {"type": "mlp", "hidden": [16]},
                "photo": {"type": "cnn", "channels": [16, 16]},
            },
        },
        "train": {
            "epochs": 25,
            "batch_size": 16,
            "lr": 0.01,
            "scheduler": "cosine",
            "device": "cpu",
            "monitor": "val.accuracy",
            "early_stopping": {"patience": 8},
        },
        "eval": {"plots": False},
        "output": {"dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    r = run_cli("train", path)
    assert r.returncode == 0, r.stderr
    (run,) = list((tmp_path / "runs").iterdir())
    accuracy = json.loads((run / "metrics.json").read_text())["metrics"]["accuracy"]
    assert accuracy >= 0.75
    meta = json.loads((run / "model.json").read_text())
    assert meta["schema"]["inputs"]["photo"]["image_shape"] == [3, 16, 16]

    # the image carries the signal: the same middle-band usage renews with a circle, not a square
    df = pd.read_csv(csv)
    light, heavy = np.quantile(df["usage"], [0.3, 0.7])
    band = df[(df["usage"] > light) & (df["usage"] < heavy)].head(40).drop(columns="renews")
    circle, square = (df.loc[df["shape"] == s, "photo"].iloc[0] for s in ("circle", "square"))
    for shape, image in (("circle", circle), ("square", square)):
        band.assign(photo=image).to_csv(out / f"{shape}.csv", index=False)  # paths relative to the CSV
    r = run_cli("predict", run, "--input", out / "circle.csv")  # the CLI, and the API
    assert r.returncode == 0, r.stderr
    predictor = danlu.load(run)
    said = {
        "circle": (pd.read_csv(io.StringIO(r.stdout))["prediction"] == "yes").mean(),
        "square": (predictor.predict(predictor.preprocessor.read(out / "square.csv")) == "yes").mean(),
    }
    print(f"images: accuracy {accuracy:.3f}, renews in the middle band {said}")
    assert said["circle"] - said["square"] >= 0.5, said

    # a row without its image path is named
    band.loc[band.index[2], "photo"] = None
    band.to_csv(out / "gap.csv", index=False)
    with pytest.raises(DanluError, match="row 3 has no image path for input 'photo'"):
        predictor.predict(predictor.preprocessor.read(out / "gap.csv"))
