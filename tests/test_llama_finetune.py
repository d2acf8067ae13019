"""Fine-tuning Llama-family checkpoints (`model.type causal_lm`, danlu/lm/finetune.py) on a
tiny random Llama written with save_pretrained: full and LoRA training through the CLI, chat
JSONL rendered with the chat template and scored on assistant turns only (the label mask
against a hand computation), packing (a packed batch's per-example loss equals the unpacked
one), multiple-choice scoring against transformers' logits, export to a Hugging Face folder
(equal logits) and a peft adapter; bad input as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import assert_user_error, write_tokenizer

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'danlu[hf]')")
pytest.importorskip("peft", reason="peft is not installed (pip install 'danlu[hf]')")
import transformers  # noqa: E402

CHATML = (
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox?"},
     {"role": "assistant", "content": "jumps over the lazy dog."}],
    [{"role": "user", "content": "Once upon a time?"},
     {"role": "assistant", "content": "there was a tiny model."},
     {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "It wrote tiny stories."}],
    [{"role": "user", "content": "What do alchemists say?"},
     {"role": "assistant", "content": "A furnace turns base metal into gold."}],
]


def write_tiny_llama(path: Path, **config: Any) -> Path:
    """A tiny random Llama (2 layers, 32-dim, grouped-query attention) with a byte-level BPE
    tokenizer and a ChatML template, written with save_pretrained."""
    hf_tok = write_tokenizer(path, CHATML)
    torch.manual_seed(0)
    settings = dict(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    initializer_range=0.2, bos_token_id=None, eos_token_id=2, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **config}))
    hf.eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def config(tmp_path: Path, ref: Path, rows: Path, model: dict | None = None, **more: Any) -> dict:
    return {
        "name": "ft",
        "task": {"type": "language_modeling", "sample_tokens": 0},
        "data": {"path": str(rows), "split": {"val": 0.25}, **more.pop("data", {})},
        "model": {"type": "causal_lm", "from": str(ref), **(model or {})},
        "train": {"optimizer": "adamw", "lr": 0.01, "batch_size": 4, "max_steps": 6, "eval_every": 3,
                  "early_stopping": None, **more.pop("train", {})},
        "output": {"dir": str(tmp_path / "runs"), "timestamp": False},
    }


def write_config(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def chat_rows(tmp_path: Path, chats: list = CHATS, n: int = 4) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in chats * n])


def pretrained(ref: Path, **model: Any) -> Any:
    from danlu.config import CausalLMConfig
    from danlu.lm.finetune import load_causal_lm

    return load_causal_lm(CausalLMConfig.model_validate({"type": "causal_lm", "from": str(ref), **model}))


# ---------------------------------------------------------------------------- data


def test_chat_labels_are_the_assistant_turns(tiny: Path, tmp_path: Path) -> None:
    """The label mask of a two-turn chat against a hand computation: the ChatML text cut at
    each assistant turn, tokenized piece by piece, scored only on the assistants' pieces."""
    from danlu.config import DataConfig
    from danlu.lm.data import build

    rows = write_jsonl(tmp_path / "one.jsonl", [{"messages": CHATS[1]}] * 4)
    pre = pretrained(tiny)
    _, _, splits = build(DataConfig(path=str(rows), split={"val": 0.25}), 128, 0, pre)
    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    pieces = [
        (enc("<|im_start|>user\nOnce upon a time?<|im_end|>\n<|im_start|>assistant\n"), False),
        (enc("there was a tiny model.<|im_end|>\n"), True),
        (enc("<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"), False),
        (enc("It wrote tiny stories.<|im_end|>\n"), True),
    ]
    ids = [t for p, _ in pieces for t in p]
    labels = [t if scored else -100 for p, scored in pieces for t in p]
    assert tok.decode(ids) == tok.apply_chat_template(CHATS[1], tokenize=False)
    x, y = splits["train"].inputs["idx"][0], splits["train"].y[0]
    assert x.tolist() == ids[:-1] and y.tolist() == labels[1:]
    assert int((y != -100).sum()) == len(pieces[1][0]) + len(pieces[3][0])


def test_packed_loss_per_example_equals_unpacked(tiny: Path) -> None:
    """Three examples packed into one window: each example's loss equals its own row's, so
    no token attends across examples and positions restart."""
    from danlu.lm.instructions import conversation as conv
    from danlu.lm.instructions import encode_chat, layout

    pre = pretrained(tiny)
    chats = CHATS[:1] + CHATS[2:] + CHATS[:1]
    examples = [encode_chat(pre.hf, conv({"messages": c}, "row"), 256) for c in chats]
    model = pre.model.eval()
    packed = layout(examples, 256, 0, packing=True)
    rows = layout(examples, 256, 0, packing=False)
    assert len(packed) == 1 and len(rows) == 3 and int(packed.inputs["segment_ids"].max()) == 3

    def token_losses(data: Any) -> torch.Tensor:
        with torch.no_grad():
            logits = model(**data.inputs)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), data.y, reduction="none")

    together, alone = token_losses(packed)[0], token_losses(rows)
    seg = packed.inputs["segment_ids"][0]
    for i in range(3):
        scored = rows.y[i] != -100
        torch.testing.assert_close(together[(seg == i + 1) & (packed.y[0] != -100)], alone[i][scored],
                                   atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- training


@pytest.mark.slow
def test_lora_trains_adapters_on_qkv_and_o_and_the_run_generates(tiny: Path, tmp_path: Path,
                                                                  invoke_cli: Any) -> None:
    from safetensors.torch import load_file

    from danlu.lm.llama_hf import from_hf
    from danlu.lm.load import resolve_lm

    body = config(tmp_path, tiny, chat_rows(tmp_path), {"lora": {"r": 4, "alpha": 8}}, data={"packing": True})
    r = invoke_cli("train", write_config(tmp_path, body), "--quiet")
    assert r.exit_code == 0, r.stderr
    run = tmp_path / "runs" / "ft"
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 4
    base = from_hf(tiny).state_dict()
    merged = load_file(str(run / "model.safetensors"))
    changed = sorted({n.split(".")[-2] for n, v in merged.items() if not torch.equal(v, base[n])})
    assert changed == ["o", "qkv"]  # the default targets; embeddings, norms, MLP frozen
    lm = resolve_lm(run, device="cpu")
    assert lm.tokenizer.hf.chat_template  # the template travels with the run
    assert lm.model.config.n_kv_head == 2
    # `danlu evaluate RUN` renders the validation chats again: the best evaluation's loss
    trained = json.loads((run / "metrics.json").read_text())["metrics"]["loss"]
    r = invoke_cli("evaluate", run)
    assert r.exit_code == 0, r.stderr
    evaluated = json.loads((run / "metrics.json").read_text())["metrics"]["loss"]
    assert evaluated == pytest.approx(trained, rel=1e-5)
    r = invoke_cli("generate", run, "--chat", "-p", "The quick brown fox?", "--max-new-tokens", "4")
    assert r.exit_code == 0, r.stderr


@pytest.mark.slow
def test_full_finetune_resumes_where_it_stopped(tiny: Path, tmp_path: Path) -> None:
    """3 steps, then --resume to 6: the same weights as 6 steps straight."""
    from safetensors.torch import load_file

    import danlu

    rows = chat_rows(tmp_path)
    body = config(tmp_path, tiny, rows, {"gradient_checkpointing": True}, train={"max_steps": 3})
    first = danlu.train(body, progress="quiet")
    danlu.train(resume=first.path, progress="quiet", train__max_steps=6)
    straight = danlu.train({**body, "name": "straight", "train": {**body["train"], "max_steps": 6}},
                           progress="quiet")
    a = load_file(str(first.path / "model.safetensors"))
    b = load_file(str(straight.path / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert not torch.equal(a["embed.weight"], pretrained(tiny).model.embed.weight)  # every weight trains


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("rows", "model", "needle"),
    [
        ([{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}], {},
         ["bad.jsonl: line", "rejects the messages", "unknown role tool"]),
        ([{"messages": [{"role": "user", "content": "only a question"}]}], {},
         ["bad.jsonl: line 1", "no assistant turn"]),
        ([{"prompt": "The quick brown fox " * 40, "completion": "x"}], {"block_size": 32},
         ["prompt is", "longer than the context of 32"]),
        ([{"messages": CHATS[0]}], {"lora": {"target_modules": ["q_proj"]}},
         ["model.lora.target_modules", "q_proj", "down, gate_up, lm_head, o, qkv"]),
    ],
)
def test_bad_input_is_one_line_and_no_run(tiny: Path, tmp_path: Path, invoke_cli: Any, rows: list,
                                          model: dict, needle: list) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", rows * 4)
    r = invoke_cli("train", write_config(tmp_path, config(tmp_path, tiny, data, model)))
    assert_user_error(r, *needle, runs_dir=tmp_path / "runs")


# ---------------------------------------------------------------------------- multiple choice

QUESTIONS = [
    {"context": "The quick brown fox jumps over the", "choices": [" lazy dog.", " tiny model.", " gold."],
     "answer": 0},
    {"context": "A furnace turns base metal into ", "choices": ["gold", "stories", "tokens"],
     "answer": "gold"},
    {"context": "", "choices": ["Once upon a time", "Language models"], "answer": 1},
]


def test_multiple_choice_scores_match_transformers(tiny: Path, tmp_path: Path, invoke_cli: Any) -> None:
    """Each choice's summed log-probability against transformers' logits, computed by hand
    the harness's way; accuracy and accuracy_norm as the CLI reports them."""
    from danlu.lm.choices import choice_logprobs, read_questions, score_choices
    from danlu.lm.load import resolve_lm

    path = write_jsonl(tmp_path / "mc.jsonl", QUESTIONS)
    lm = resolve_lm(tiny, device="cpu")
    hf = transformers.LlamaForCausalLM.from_pretrained(tiny).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny)
    right = right_norm = 0
    for q in read_questions(path):
        ours = choice_logprobs(lm, q)
        sums = []
        for choice, (score, n) in zip(q.choices, ours, strict=True):
            context = q.context.rstrip()
            cont_text = q.context[len(context):] + choice
            ctx = tok.encode(context) if context else [2]  # the EOS token stands for an empty context
            whole = tok.encode(context + cont_text)
            cont = whole[len(ctx):] if context else whole
            with torch.no_grad():
                logp = hf(torch.tensor([(ctx + cont)[:-1]])).logits[0].log_softmax(-1)
            expected = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
            assert n == len(cont)
            assert score == pytest.approx(expected, abs=1e-4)
            sums.append(expected)
        right += max(range(len(sums)), key=sums.__getitem__) == q.answer
        norm = [s / len(c) for s, c in zip(sums, q.choices, strict=True)]
        right_norm += max(range(len(norm)), key=norm.__getitem__) == q.answer
    metrics = score_choices(lm, read_questions(path))
    assert metrics == {"accuracy": right / 3, "accuracy_norm": right_norm / 3, "questions": 3}
    r = invoke_cli("evaluate", tiny, "--choices", path)
    assert r.exit_code == 0, r.stderr
    assert "accuracy_norm" in r.stdout and f"{right / 3:.4f}" in r.stdout


def test_multiple_choice_bad_rows(tiny: Path, tmp_path: Path, invoke_cli: Any) -> None:
    path = write_jsonl(tmp_path / "mc.jsonl", [{"context": "x", "choices": ["a", "b"], "answer": 2}])
    assert_user_error(invoke_cli("evaluate", tiny, "--choices", path), "mc.jsonl: line 1", "'answer'")


# ---------------------------------------------------------------------------- export


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "phi3", "gemma"])
def test_hf_config_and_weights_round_trip(family: str, tmp_path: Path) -> None:
    """danlu's Llama of each family -> config.json + transformers' weight names -> the
    family's transformers class, with equal logits."""
    from safetensors.torch import save_file
    from test_llama import tiny_hf

    from danlu.lm.llama_export import config_to_hf, state_to_hf
    from danlu.lm.llama_hf import config_from_hf, from_transformers

    ours = from_transformers(tiny_hf(family), family)
    cfg = ours.config
    assert config_from_hf(config_to_hf(cfg), "exported") == cfg
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(cfg)), encoding="utf-8")
    save_file(state_to_hf(ours.state_dict(), cfg), tmp_path / "model.safetensors")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_export_lora_run_merged_and_as_a_peft_adapter(tiny: Path, tmp_path: Path, invoke_cli: Any) -> None:
    from peft import PeftModel

    import danlu
    from danlu.lm.load import resolve_lm

    lora = {"lora": {"r": 4, "target_modules": ["qkv", "o", "gate_up", "down"]}}
    body = config(tmp_path, tiny, chat_rows(tmp_path), lora, train={"precision": "bf16"})  # bf16 autocast
    run = danlu.train(body, progress="quiet").path
    ours = resolve_lm(run, device="cpu").model
    ids = torch.randint(0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(ids)

    merged = tmp_path / "merged"
    r = invoke_cli("export", run, merged)
    assert r.exit_code == 0, r.stderr
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in merged.iterdir()}
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
    tok = transformers.AutoTokenizer.from_pretrained(merged)
    assert tok.apply_chat_template(CHATS[0], tokenize=False).startswith("<|im_start|>system\nBe brief.")
    assert hf.generation_config.eos_token_id == 2
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-4, rtol=1e-4)

    adapter = tmp_path / "adapter"
    r = invoke_cli("export", run, adapter, "--adapter-only")
    assert r.exit_code == 0, r.stderr
    config_json = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config_json["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                     "up_proj", "v_proj"]
    base = transformers.LlamaForCausalLM.from_pretrained(tiny).eval()
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, expected, atol=1e-3)  # the adapters changed something
        peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
        torch.testing.assert_close(peft_model(ids).logits, expected, atol=1e-4, rtol=1e-4)

    assert_user_error(invoke_cli("export", run, tmp_path / "onnx", "--format", "onnx"), "--format hf")
    full = danlu.train({**config(tmp_path, tiny, chat_rows(tmp_path)), "name": "full"}, progress="quiet").path
    assert_user_error(invoke_cli("export", full, tmp_path / "a2", "--adapter-only"), "no adapter/ folder")
    assert not (tmp_path / "a2").exists()
