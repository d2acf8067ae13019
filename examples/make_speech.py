"""Write examples/data/speech/: ten English sentences spoken by espeak-ng at 150 words per
minute (s00.wav ... s09.wav, 22,050 Hz) and manifest.csv (audio,text) for
`danlu transcribe` and `danlu evaluate MODEL --manifest`. Needs espeak-ng
(apt-get install espeak-ng; scripts/system_deps.sh)."""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather is cold and windy today.",
    "I would like a cup of coffee with milk.",
    "We are going to the beach this weekend.",
    "My brother plays the guitar every evening.",
    "The train leaves the station at noon.",
    "Can you help me carry these heavy boxes?",
    "She reads a book before going to sleep.",
    "The children are playing in the park.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data" / "speech")
    out = parser.parse_args().out
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is not installed: apt-get install espeak-ng (scripts/system_deps.sh)")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["audio", "text"])
        for i, text in enumerate(SENTENCES):
            subprocess.run([espeak, "-s", "150", "-w", str(out / f"s{i:02d}.wav"), text], check=True)
            writer.writerow([f"s{i:02d}.wav", text])
    print(f"{len(SENTENCES)} sentences in {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
