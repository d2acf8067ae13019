"""Language models beyond training from scratch: fine-tuning a GPT-2 checkpoint (full and
LoRA), prompt/completion instruction data, perplexity on any text with a sliding window,
samples logged at each evaluation, and the LR schedule spanning max_steps.

References: transformers' GPT2LMHeadModel (logits, the perplexity guide's recipe), peft's
own adapter loading and merging, and hand computations of the masked loss.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SENTENCES as SENTENCES
from conftest import assert_user_error, cli, make_tiny_gpt2

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'danlu[hf]')")
from safetensors.torch import load_file  # noqa: E402
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

import danlu  # noqa: E402
from danlu.config import TrainConfig  # noqa: E402
from danlu.lm.evaluation import text_perplexity, windows  # noqa: E402
from danlu.lm.load import resolve_lm  # noqa: E402
from danlu.training.optim import build_optimizer, build_scheduler  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 folder with a byte-level BPE tokenizer (48 positions)."""
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def write_yaml(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def finetune_config(tmp_path: Path, hf_dir: Path, **model: object) -> Path:
    text = tmp_path / "text.txt"
    text.write_text("\n".join(SENTENCES * 12), encoding="utf-8")
    return write_yaml(
        tmp_path / "ft.yaml",
        {
            "name": "ft",
            "task": {"type": "language_modeling", "sample_tokens": 8},
            "data": {"path": str(text), "split": {"val": 0.2}},
            "model": {"type": "gpt", "from": str(hf_dir), "block_size": 32, **model},
            "train": {"optimizer": "adamw", "lr": 0.003, "batch_size": 8, "max_steps": 40,
                      "eval_every": 20, "early_stopping": None},
            "output": {"dir": str(tmp_path / "runs"), "timestamp": False},
        },
    )


# ---------------------------------------------------------------------------- fine-tuning


@pytest.mark.slow
def test_full_finetune_lowers_loss_and_exports_to_transformers(hf_dir: Path, tmp_path: Path) -> None:
    cfg = finetune_config(tmp_path, hf_dir)
    r = cli("train", cfg, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "ft"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # the checkpoint's architecture is written into the run's config
    assert saved["model"]["from"] == str(hf_dir)
    assert (saved["model"]["n_layer"], saved["model"]["n_embd"], saved["model"]["block_size"]) == (2, 32, 32)
    assert json.loads((run / "model.json").read_text())["fine_tuned_from"] == str(hf_dir)

    # the same text, the same windows: the fine-tuned model fits it better than the base
    val_text = tmp_path / "val.txt"
    val_text.write_text(" ".join(SENTENCES), encoding="utf-8")
    base = text_perplexity(resolve_lm(hf_dir, device="cpu"), val_text.read_text(), max_length=32)
    tuned = text_perplexity(resolve_lm(run, device="cpu"), val_text.read_text(), max_length=32)
    assert tuned["tokens"] == base["tokens"]
    assert tuned["loss"] < base["loss"] - 1.0

    # `danlu evaluate RUN` rebuilds the validation blocks with the run's own tokenizer; the
    # run's model is its best evaluation's
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    col = rows[0].split(",").index("val.loss")
    best_val = min(float(r.split(",")[col]) for r in rows[1:])
    r = cli("evaluate", run, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    evaluated = json.loads((run / "metrics.json").read_text())["metrics"]["loss"]
    assert evaluated == pytest.approx(best_val, rel=1e-5)

    out = tmp_path / "export"
    r = cli("export", run, "--format", "hf", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    danlu_model = resolve_lm(run, device="cpu").model
    ids = torch.randint(0, hf.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(danlu_model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_lora_trains_only_adapters_and_merges_like_peft(hf_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    from danlu.lm.hf import from_hf

    cfg = finetune_config(tmp_path, hf_dir, lora={"r": 4, "alpha": 8, "target_modules": ["c_attn", "c_fc"]})
    r = cli("train", cfg, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "ft"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    merged = load_file(str(run / "model.safetensors"))

    base = from_hf(hf_dir)
    base.crop_block_size(32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    reference = PeftModel.from_pretrained(base, str(run / "adapter")).merge_and_unload().state_dict()
    changed = []
    for name, value in merged.items():
        torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=1e-5)
        if not torch.equal(value, before[name]):
            changed.append(name)
    # only the adapted layers moved; embeddings, norms and the other projections are frozen
    assert changed and all(n.endswith(("c_attn.weight", "c_fc.weight")) for n in changed), changed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "data", "needle"),
    [
        ({"block_size": 100}, {}, "larger than the context"),
        ({"n_layer": 3}, {}, "contradicts the checkpoint"),
        ({"lora": {"target_modules": ["qkv"]}}, {}, "its Linear layers are: c_attn"),
        ({}, {"tokenizer": "char"}, "uses the tokenizer of model.from"),
    ],
)
def test_finetune_bad_input(hf_dir: Path, tmp_path: Path, model: dict, data: dict, needle: str) -> None:
    cfg = finetune_config(tmp_path, hf_dir, **model)
    body = yaml.safe_load(cfg.read_text())
    body["data"].update(data)
    write_yaml(cfg, body)
    assert_user_error(cli("train", cfg, cwd=tmp_path), needle)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_lora_without_a_checkpoint_is_rejected(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", {"data": {"path": "x.txt"}, "model": {"type": "gpt", "lora": {}}})
    assert_user_error(cli("train", cfg, cwd=tmp_path), "set model.from")


# ---------------------------------------------------------------------------- prompt / completion

PAIRS = [(f"{a}+{b}=", str(a + b)) for a in range(5) for b in range(5)]


def test_prompt_completion_rows_score_only_completions(tmp_path: Path) -> None:
    from danlu.config import DataConfig
    from danlu.lm import data as text

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS), encoding="utf-8")
    cfg = DataConfig(path=str(data), tokenizer="char", split={"val": 0.2})
    schema, tok, splits = text.build(cfg, block_size=16, seed=0)
    assert len(splits["val"]) == 5 and len(splits["train"]) == 20
    eos = tok.eos_token_id
    answers = dict(PAIRS)
    for x, y in zip(splits["train"].inputs["idx"], splits["train"].y, strict=True):
        fed = tok.decode([int(t) for t in x if int(t) != eos])  # prompt + completion, then padding
        prompt = fed[: fed.index("=") + 1]
        scored = [int(t) for t in y if t != -100]
        # the targets are exactly the completion's characters and EOS; prompt and padding are not scored
        assert tok.decode(scored[:-1]) == answers[prompt] and scored[-1] == eos
        assert int((y != -100).sum()) == len(answers[prompt]) + 1


def test_instruction_tuning_val_loss_is_the_completion_loss(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS), encoding="utf-8")
    run = danlu.train(
        {
            "task": {"type": "language_modeling", "sample_tokens": 0},
            "data": {"path": str(data), "tokenizer": "char", "split": {"val": 0.2}},
            "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16},
            "train": {"optimizer": "adamw", "lr": 0.01, "batch_size": 4, "max_steps": 30, "eval_every": 30,
                      "early_stopping": None},
            "output": {"dir": str(tmp_path / "runs")},
        },
        progress="quiet",
    )
    from danlu.config import DataConfig
    from danlu.lm import data as text

    lm = resolve_lm(run.path, device="cpu")
    _, tok, splits = text.build(DataConfig(path=str(data), tokenizer="char", split={"val": 0.2}), 16, seed=0)
    # hand computation: mean cross-entropy over the completion (and EOS) tokens of val pairs
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in zip(splits["val"].inputs["idx"], splits["val"].y, strict=True):
            logp = lm.model(x[None])[0].log_softmax(-1)
            for t in range(len(y)):
                if y[t] != -100:
                    total -= float(logp[t, y[t]])
                    count += 1
    assert count == int((splits["val"].y != -100).sum()) > 0
    assert run.metrics["metrics"]["loss"] == pytest.approx(total / count, rel=1e-5)


# ---------------------------------------------------------------------------- perplexity


def test_sliding_window_plan_scores_every_token_once() -> None:
    plan = windows(100, max_length=40, stride=25)
    assert plan == [(0, 40, 0), (25, 65, 40), (50, 90, 65), (75, 100, 90)]
    scored = [t for b, e, new in plan for t in range(max(b + 1, new), e)]
    assert scored == list(range(1, 100))


def test_perplexity_matches_the_transformers_recipe(hf_dir: Path) -> None:
    text = " ".join(SENTENCES * 3)
    ours = text_perplexity(resolve_lm(hf_dir, device="cpu"), text, max_length=24, stride=10)
    # https://huggingface.co/docs/transformers/perplexity, written out; the guide subtracts one
    # token per window for the label shift even where the first label is already masked, so
    # tokens are counted here as the shifted loss counts them
    model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ids = PreTrainedTokenizerFast.from_pretrained(hf_dir)(text, return_tensors="pt").input_ids
    nll, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, ids.size(1), 10):
        end = min(begin + 24, ids.size(1))
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target).loss
        valid = int((target[:, 1:] != -100).sum())  # what the shifted loss averages over
        nll += float(loss) * valid
        n_tokens += valid
        prev_end = end
        if end == ids.size(1):
            break
    assert ours["tokens"] == n_tokens
    assert ours["perplexity"] == pytest.approx(math.exp(nll / n_tokens), rel=1e-5)


@pytest.mark.slow
def test_evaluate_text_cli(hf_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text(" ".join(SENTENCES * 3), encoding="utf-8")
    r = cli("evaluate", hf_dir, "--text", text, "--stride", "10", "--max-length", "24", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "perplexity" in r.stdout and "stride" in r.stdout
    too_long = cli("evaluate", hf_dir, "--text", text, "--max-length", "100", cwd=tmp_path)
    assert_user_error(too_long, "context (48")
    assert_user_error(cli("evaluate", hf_dir, "--text", text, "--stride", "0", cwd=tmp_path), "--stride")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    assert_user_error(cli("evaluate", hf_dir, "--text", tmp_path / "empty.txt", cwd=tmp_path), "empty")


# ---------------------------------------------------------------------------- samples, schedule


def test_samples_are_logged_without_disturbing_training(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("\n".join(SENTENCES * 10), encoding="utf-8")

    def train(sample_tokens: int) -> danlu.api.Run:
        return danlu.train(
            {
                "task": {"type": "language_modeling", "sample_tokens": sample_tokens},
                "data": {"path": str(text), "tokenizer": "char", "split": {"val": 0.2}},
                "model": {"type": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 24,
                          "dropout": 0.2},
                "train": {"optimizer": "adamw", "batch_size": 8, "max_steps": 20, "eval_every": 10,
                          "early_stopping": None},
                "output": {"dir": str(tmp_path / f"runs{sample_tokens}")},
            },
            progress="quiet",
        )

    with_samples, without = train(12), train(0)
    samples = (with_samples.path / "samples.md").read_text(encoding="utf-8")
    assert samples.count("## step") == 2 and "## step 20" in samples
    assert not (without.path / "samples.md").exists()
    # sampling uses its own generator on a copy: dropout masks and weights are unchanged
    assert [r["train.loss"] for r in with_samples.history] == [r["train.loss"] for r in without.history]


def test_schedule_spans_max_steps_not_epochs() -> None:
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=1.0, epochs=100, max_steps=50,
                      scheduler={"name": "warmup_cosine", "warmup": 5, "min_lr_ratio": 0.1})
    opt = build_optimizer(model, cfg)
    sched, interval = build_scheduler(opt, cfg, steps_per_epoch=1000, monitor_mode="min")
    assert interval == "step"
    for _ in range(50):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
