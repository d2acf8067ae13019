"""Text and numeric-sequence models: tokenizers, rnn, transformer, CLI end to end, examples."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import danlu
from danlu.config import DataConfig, RNNConfig, TextInputConfig, TransformerConfig
from danlu.data.sequences import SequenceSchema, TextPreprocessor
from danlu.data.tabular import TabularPreprocessor
from danlu.models.rnn import RNNEncoder
from danlu.models.transformer import TransformerEncoder

ROOT = Path(__file__).resolve().parents[1]
SENTIMENT = ROOT.parent / "shared" / "data" / "sentiment"

POSITIVE = ["good", "great", "lovely", "excellent", "superb", "fun", "tasty", "friendly"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "rude", "cold", "bland", "broken"]
FILLER = ["the", "food", "movie", "staff", "was", "really", "and", "very", "phone", "service", "a", "it"]


def sentiment_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Short sentences whose label is the majority polarity of their opinion words."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        own, other = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
        words = list(rng.choice(FILLER, rng.integers(2, 9)))
        words += list(rng.choice(own, 2)) + list(rng.choice(other, rng.integers(0, 2)))
        rng.shuffle(words)
        rows.append({"review": " ".join(words).capitalize() + rng.choice([".", "!", ""]), "stars": label})
    return pd.DataFrame(rows)


def text_cfg(**kw: object) -> TextInputConfig:
    return TextInputConfig(**kw)


def fitted(texts: list[str], **kw: object) -> TextPreprocessor:
    df = pd.DataFrame({"text": texts, "y": [i % 2 for i in range(len(texts))]})
    cfg = DataConfig(path="unused.csv", text=text_cfg(**kw))
    target = TabularPreprocessor.fit(df, cfg, "classification", ["y"], "data", [], [])
    return TextPreprocessor.fit(df, cfg, target, "data", None)


def cli_in_process(*args: object) -> SimpleNamespace:
    """The `danlu` command run in this process (the CLI's own error handling and exit codes,
    without a new interpreter importing torch): returncode, stdout, stderr."""
    from typer.testing import CliRunner

    from danlu.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


# --------------------------------------------------------------------------- tokenizers
def test_word_tokenizer_matches_a_hand_count() -> None:
    train = ["The cat sat.", "the cat dog!", "A dog sat, the cat dog", "the cat the end"]
    pre = fitted(train, tokenizer="word", vocab_size=2 + 3, min_frequency=2)
    # reference: lowercase, split words from punctuation runs, keep the 3 most frequent seen twice
    counts = Counter(t for s in train for t in re.findall(r"\w+|[^\w\s]+", s.lower()))
    kept = [w for w, c in counts.most_common() if c >= 2][:3]
    vocab = pre.tok.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
    assert set(vocab) == {"[PAD]", "[UNK]", *kept}
    ids = pre.encode(pd.DataFrame({"text": ["The dog flew, the cat SAT"]}), "x")[0]
    expected = [vocab.get(t, 1) for t in re.findall(r"\w+|[^\w\s]+", "the dog flew, the cat sat")]
    assert ids == expected


def test_given_tokenizer_json_encodes_like_transformers(tmp_path: Path) -> None:
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    hf = BertTokenizerFast.from_pretrained(str(tmp_path))  # reads vocab.txt
    hf.save_pretrained(str(tmp_path / "tok"))
    texts = ["The cat sat on the mats.", "cats sat", "the the the the the the the the the dog"]
    pre = fitted(texts, tokenizer=str(tmp_path / "tok" / "tokenizer.json"), max_length=8)
    ours = pre.encode(pd.DataFrame({"text": texts}), "x")
    assert ours == hf(texts, truncation=True, max_length=8)["input_ids"]  # [SEP] kept when cut
    assert ours[1] == [2, 6, 10, 7, 3]  # [CLS] cat ##s sat [SEP]
    assert pre.pad_id == hf.pad_token_id


@pytest.mark.parametrize("kind", ["char", "word", "wordpiece", "bpe"])
def test_fitted_tokenizers_round_trip_through_the_run_folder(tmp_path: Path, kind: str) -> None:
    train = sentiment_frame(60)["review"].tolist()
    pre = fitted(train, tokenizer=kind, vocab_size=200, max_length=40)
    pre.save_files(tmp_path)
    again = TextPreprocessor.from_state(json.loads(json.dumps(pre.state())), tmp_path)
    new = pd.DataFrame({"text": ["Really GOOD food!", "zzz unseen words", train[3]]})
    assert again.encode(new, "x") == pre.encode(new, "x")
    decoded = pre.tok.decode(pre.encode(new, "x")[0])
    expected = {"char": "really good food!", "word": "really good food !", "wordpiece": "really good food!"}
    assert decoded.strip() == expected.get(kind, "really good food!")


def test_truncation_and_padding() -> None:
    pre = fitted(["a b c d e f g h", "a b"], tokenizer="word", max_length=4)
    data = pre.dataset(pd.DataFrame({"text": ["a b c d e f g h", "a", "b c"], "y": [0, 1, 0]}), "x")
    assert data.values.shape == (3, 4) and data.lengths.tolist() == [4, 1, 2]
    x, _ = next(data.batches(2, shuffle=False, seed=0).epoch(0))
    assert x["input_ids"].shape == (2, 4) and x["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    fixed = fitted(["a b c", "b"], tokenizer="word", max_length=6, padding="max_length")
    x, _ = next(
        fixed.dataset(pd.DataFrame({"text": ["a"], "y": [0]}), "x").batches(4, shuffle=False, seed=0).epoch(0)
    )
    assert x["input_ids"].shape == (1, 6)


def test_bucketed_batches_cover_every_row_once_and_follow_seed_and_epoch() -> None:
    pre = fitted([f"w{i} " * (1 + i % 13) for i in range(200)], tokenizer="word", max_length=20)
    df = pd.DataFrame(
        {"text": [f"w{i} " * (1 + i % 13) for i in range(200)], "y": [i % 2 for i in range(200)]}
    )
    data = pre.dataset(df, "x")
    source = data.batches(16, shuffle=True, seed=3)
    rows = [b["input_ids"][:, 0].tolist() for b, _ in source.epoch(0)]
    assert sorted(sum(rows, [])) == sorted(data.values[:, 0].tolist())
    again = [b["input_ids"][:, 0].tolist() for b, _ in data.batches(16, shuffle=True, seed=3).epoch(0)]
    assert rows == again and rows != [b["input_ids"][:, 0].tolist() for b, _ in source.epoch(1)]
    resumed = [b["input_ids"][:, 0].tolist() for b, _ in source.epoch(0, start=5)]
    assert resumed == rows[5:]
    # length bucketing: far less padding than random batches
    padded = sum(int(b["attention_mask"].numel()) for b, _ in source.epoch(0))
    assert padded < 1.3 * int(data.lengths.sum())


# --------------------------------------------------------------------------- models
def _schema(kind: str = "text", vocab: int = 50, features: int = 0) -> SequenceSchema:
    return SequenceSchema(
        "classification", ["y"], [0, 1, 2], kind, "t", 32, vocab_size=vocab, pad_id=0, n_features=features
    )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
def test_packed_rnn_equals_the_unpadded_rows(cell: str, pooling: str) -> None:
    torch.manual_seed(0)
    model = RNNEncoder(
        RNNConfig(cell=cell, hidden=8, embedding_dim=6, layers=2, bidirectional=True, pooling=pooling),
        _schema(),
        3,
    ).eval()
    lengths = [7, 3, 1, 5]
    ids = torch.randint(2, 50, (4, 7))  # junk (not even the pad id) beyond each length
    mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long()
    batched = model(ids, mask)
    for r, n in enumerate(lengths):
        # reference: the plain (unpacked) recurrence over the row alone, pooled by hand
        seq, h = model.rnn(model.embed(ids[r : r + 1, :n]))
        h = h[0] if isinstance(h, tuple) else h
        if pooling == "last":
            pooled = torch.cat([h[-2], h[-1]], dim=-1)
        elif pooling == "mean":
            pooled = seq.mean(1)
        elif pooling == "max":
            pooled = seq.max(1).values
        else:
            pooled = (model.score(seq).softmax(1) * seq).sum(1)
        torch.testing.assert_close(batched[r : r + 1], model.head(pooled), atol=1e-5, rtol=1e-5)


def test_self_attention_matches_torch_multihead_attention() -> None:
    torch.manual_seed(0)
    model = TransformerEncoder(
        TransformerConfig(d_model=16, heads=4, layers=1, ff=32, dropout=0.0), _schema(), 3
    ).eval()
    attn = model.blocks[0].attn
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.qkv.weight)
        ref.in_proj_bias.copy_(attn.qkv.bias)
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 5, 16)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    ours = attn(x, keep[:, None, None, :])
    theirs, _ = ref(x, x, x, key_padding_mask=~keep, need_weights=False)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("pre_norm", [True, False])
def test_transformer_output_does_not_depend_on_padding(pooling: str, positions: str, pre_norm: bool) -> None:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        d_model=16, heads=2, layers=2, ff=32, pooling=pooling, positions=positions, pre_norm=pre_norm
    )
    model = TransformerEncoder(cfg, _schema(), 3).eval()
    ids = torch.randint(2, 50, (3, 6))
    lengths = torch.tensor([6, 2, 4])
    outs = []
    for width in (6, 11, 20):
        padded = torch.cat([ids, torch.randint(2, 50, (3, width - 6))], dim=1)  # junk, masked out
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        outs.append(model(padded, mask))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0], outs[2], atol=1e-5, rtol=1e-5)
    alone = model(ids[1:2, :2], torch.ones(1, 2, dtype=torch.long))
    torch.testing.assert_close(outs[0][1:2], alone, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_text_classification_cli_train_predict_evaluate(
    tmp_path: Path, write_config, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = sentiment_frame(300)
    df.to_csv(tmp_path / "reviews.csv", index=False)
    cfg = write_config(
        {
            "data": {
                "path": "reviews.csv",
                "target": "stars",
                "split": {"val": 0.15, "test": 0.2},
                "text": {"column": "review", "tokenizer": "wordpiece", "vocab_size": 120},
            },
            "model": {
                "type": "rnn",
                "cell": "gru",
                "hidden": 32,
                "embedding_dim": 32,
                "pooling": "attention",
            },
            "train": {"epochs": 12, "lr": 0.01, "monitor": "val.accuracy", "early_stopping": False},
        }
    )
    result = run_cli("train", cfg)
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs").iterdir())
    assert json.loads((run / "metrics.json").read_text())["metrics"]["accuracy"] >= 0.9
    assert (run / "tokenizer.json").is_file()
    pd.DataFrame({"review": ["Great and tasty food", "Awful rude staff, cold food"], "id": [7, 8]}).to_json(
        tmp_path / "new.jsonl", orient="records", lines=True
    )
    out = run_cli("predict", run, "--input", "new.jsonl", "--proba")
    assert out.returncode == 0, out.stderr
    pred = pd.read_csv(pd.io.common.StringIO(out.stdout))
    assert pred["prediction"].tolist() == [1, 0] and pred["id"].tolist() == [7, 8]
    assert {"proba_0", "proba_1"} <= set(pred.columns)
    monkeypatch.chdir(tmp_path)  # the config names reviews.csv relative to where training ran
    ev = cli_in_process("evaluate", run)
    assert ev.returncode == 0 and "accuracy" in ev.stdout, ev.stderr
    predictor = danlu.load(run)
    assert predictor.predict(["lovely superb fun", "boring bland broken phone"]).tolist() == [1, 0]
    proba = predictor.predict_proba("the food was superb")
    assert proba.shape == (1, 2) and abs(proba.sum() - 1) < 1e-6


def test_transformer_text_regression(tmp_path: Path) -> None:
    df = sentiment_frame(240, seed=1)
    # the target counts positive words: a numeric target read from text
    df["score"] = df["review"].str.lower().str.findall(r"\w+").map(lambda w: sum(x in POSITIVE for x in w))
    df.to_csv(tmp_path / "scores.csv", index=False)
    run = danlu.train(
        {
            "data": {
                "path": str(tmp_path / "scores.csv"),
                "target": "score",
                "text": {"column": "review", "tokenizer": "char", "max_length": 80},
            },
            "task": {"type": "regression"},
            "model": {
                "type": "transformer",
                "d_model": 32,
                "heads": 2,
                "layers": 1,
                "ff": 64,
                "pooling": "cls",
                "positions": "sinusoidal",
                "dropout": 0.0,
            },
            "train": {"epochs": 2, "device": "cpu"},
            "eval": {"plots": False},
            "output": {"dir": str(tmp_path / "runs")},
        },
        progress="quiet",
    )
    assert {"rmse", "r2"} <= set(run.metrics["metrics"])
    assert danlu.load(run.path).predict(["good good great"]).shape == (1,)


def test_numeric_sequences_from_npz_and_from_a_list_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, t = 300, 12
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, t, 2)).astype(np.float32)
    x[:, :, 0] += np.where(y, 0.6, -0.6)[:, None]  # the label shifts the first channel
    np.savez(tmp_path / "series.npz", x=x, y=y)
    body = {
        "name": "seq",
        "train": {"epochs": 10, "batch_size": 32, "device": "cpu", "lr": 0.01},
        "eval": {"plots": False},
        "output": {"dir": str(tmp_path / "runs")},
    }
    run = danlu.train(
        {
            **body,
            "data": {"path": str(tmp_path / "series.npz"), "sequence": {"column": "x", "targets": "y"}},
            "model": {"type": "rnn", "cell": "gru", "hidden": 16, "pooling": "mean"},
        },
        progress="quiet",
    )
    assert run.metrics["metrics"]["accuracy"] >= 0.9
    # the same task from a JSONL list column with rows of different lengths
    rows = [{"values": x[i, : 6 + i % 7].tolist(), "label": int(y[i])} for i in range(n)]
    pd.DataFrame(rows).to_json(tmp_path / "series.jsonl", orient="records", lines=True)
    run = danlu.train(
        {
            **body,
            "data": {
                "path": str(tmp_path / "series.jsonl"),
                "target": "label",
                "sequence": {"column": "values"},
            },
            "model": {
                "type": "transformer",
                "d_model": 16,
                "heads": 2,
                "layers": 1,
                "ff": 32,
                "pooling": "mean",
                "dropout": 0.0,
            },
        },
        progress="quiet",
    )
    assert run.metrics["metrics"]["accuracy"] >= 0.85
    assert danlu.load(run.path).predict([[[1.0, 0.0]] * 4, [[-1.0, 0.0]] * 9]).tolist() == [1, 0]


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ({"column": "reveiw"}, "text column 'reveiw' not found (did you mean 'review'?)"),
        ({"column": "stars"}, "column 'stars' holds int64 values, not text"),
        ({"column": "review", "max_length": 4, "truncation": False}, "more than data.text.max_length 4"),
    ],
)
def test_bad_text_input_is_one_line_exit_2(tmp_path: Path, write_config, text, message) -> None:
    sentiment_frame(40).to_csv(tmp_path / "reviews.csv", index=False)
    cfg = write_config(
        {
            "data": {"path": str(tmp_path / "reviews.csv"), "target": "stars", "text": text},
            "model": {"type": "rnn"},
        }
    )
    result = cli_in_process("train", cfg)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if "max_length" in message:
        assert re.search(r"row \d+ of column 'review' has \d+ tokens", result.stderr)
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- examples
@pytest.mark.skipif(not SENTIMENT.is_dir(), reason="../shared/data/sentiment is absent")
@pytest.mark.parametrize("example", ["sentiment_lstm.yaml", "sentiment_transformer.yaml"])
@pytest.mark.slow
def test_sentiment_examples_reach_075(tmp_path: Path, example: str) -> None:
    run = danlu.train(
        ROOT / "examples" / example,
        {
            "data.train": str(SENTIMENT / "train.csv"),
            "data.test": str(SENTIMENT / "test.csv"),
            "output.dir": str(tmp_path / "runs"),
            "eval.plots": False,
        },
        progress="quiet",
    )
    assert run.metrics["metrics"]["accuracy"] >= 0.75
