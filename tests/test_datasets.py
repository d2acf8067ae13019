"""Named public datasets (danlu/datasets.py): the pinned checksums against the copies in
../shared/data, the preparation of each download, and the download path against a local HTTP
server: a good file, a checksum mismatch, a connection cut mid-file, no network at all."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import _env, assert_user_error

from danlu import config, datasets
from danlu.errors import DanluError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def needs_shared(root: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SHARED / root).exists(), reason=f"../shared/data/{root} is absent")


# --------------------------------------------------------------------------- a local server
class Server:
    """An HTTP server on 127.0.0.1 serving `files` (name -> bytes); a name in `cut` gets a
    Content-Length of the whole file but only its first half before the connection closes; a
    name in `hold` gets its first half, then nothing until `release` is set."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.hold: set[str] = set()
        self.release = threading.Event()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                name = self.path.lstrip("/")
                outer.requests.append(name)
                if name not in outer.files:
                    self.send_error(404)
                    return
                body = outer.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in outer.cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if name in outer.hold:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    outer.release.wait()
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data directory as DANLU_DATA (for this process and the CLI's subprocesses)."""
    d = tmp_path / "data"
    monkeypatch.setenv("DANLU_DATA", str(d))
    return d


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def archive_name(name: str) -> str:
    return datasets.get(name).url.rsplit("/", 1)[-1]


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def sentiment_zip(tmp_path: Path) -> bytes:
    """The UCI archive's layout: one folder, the three files and readme, macOS junk beside."""
    top = "sentiment labelled sentences"
    members = {f"{top}/{p.name}": p.read_bytes() for p in sorted((SHARED / "sentiment/source").iterdir())}
    members[f"__MACOSX/{top}/._amazon_cells_labelled.txt"] = b"\x00\x05\x16\x07junk"
    members[f"{top}/.DS_Store"] = b"junk"
    return make_zip(tmp_path / "sentiment.zip", members).read_bytes()


def no_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --------------------------------------------------------------------------- the pinned files
@pytest.mark.parametrize("name", list(datasets.DATASETS))
def test_pinned_checksums_match_the_shared_copies(name: str) -> None:
    ds = datasets.get(name)
    if not (SHARED / ds.root).exists():
        pytest.skip(f"../shared/data/{ds.root} is absent")
    assert datasets.files_sha256(SHARED / ds.root) == (ds.sha256, ds.files, ds.size)


def test_listing_digest_is_sha256sum_of_sorted_listing(tmp_path: Path) -> None:
    # the documented recipe: sha256sum of each file sorted by path, then sha256 of that listing
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_bytes(b"zz")
    (tmp_path / "a.txt").write_bytes(b"aa")
    (tmp_path / datasets.RECORD).write_text("{}")  # danlu's own record is not a data file
    listing = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in (("a.txt", b"aa"), ("b/z.txt", b"zz"))
    )
    assert datasets.files_sha256(tmp_path) == (hashlib.sha256(listing.encode()).hexdigest(), 2, 4)


@needs_shared("sentiment")
def test_sentiment_split_is_recreated_byte_for_byte(tmp_path: Path) -> None:
    datasets.split_sentiment(SHARED / "sentiment" / "source", tmp_path)
    for name in ("train.csv", "test.csv"):
        assert (tmp_path / name).read_bytes() == (SHARED / "sentiment" / name).read_bytes()
    assert (tmp_path / "train.csv").read_bytes().count(b"\r\n") == 2401  # header + 2,400 rows


# --------------------------------------------------------------------------- download: good file
@needs_shared("sentiment")
def test_get_downloads_prepares_verifies_and_records_licence(
    tmp_path: Path, server: Server, data_dir: Path, run_cli: Callable
) -> None:
    server.files[archive_name("sentiment_labelled_sentences")] = sentiment_zip(tmp_path)
    r = run_cli("data", "get", "sentiment_labelled_sentences", env={"DANLU_DATASETS_MIRROR": server.url})
    assert r.returncode == 0, r.stderr
    assert "downloading dataset sentiment_labelled_sentences" in r.stderr
    assert server.requests == ["sentiment+labelled+sentences.zip"]
    target = data_dir / "sentiment"
    for rel in ("train.csv", "test.csv", "source/imdb_labelled.txt", "source/readme.txt"):
        assert (target / rel).read_bytes() == (SHARED / "sentiment" / rel).read_bytes()
    assert not (target / "source" / ".DS_Store").exists() and not (data_dir / "__MACOSX").exists()
    record = json.loads((target / datasets.RECORD).read_text(encoding="utf-8"))
    assert record["license"] == "CC BY 4.0 (UCI)" and record["source"].startswith(server.url)
    assert record["canonical_url"] == datasets.get("sentiment_labelled_sentences").url
    assert no_leftovers(data_dir) == ["sentiment"]  # no temp folder, no download left
    # the next use finds it: no second request
    again = run_cli("data", "get", "sentiment_labelled_sentences", env={"DANLU_DATASETS_MIRROR": server.url})
    assert again.returncode == 0 and "already present" in again.stdout
    assert len(server.requests) == 1


@needs_shared("tinyshakespeare.txt")
def test_config_loading_downloads_a_missing_dataset(
    server: Server, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files["input.txt"] = (SHARED / "tinyshakespeare.txt").read_bytes()
    monkeypatch.setenv("DANLU_DATASETS_MIRROR", server.url)
    cfg = config.load(ROOT / "examples" / "shakespeare_char.yaml")
    assert cfg.data.path == str(data_dir / "tinyshakespeare.txt")
    assert Path(cfg.data.path).read_bytes() == (SHARED / "tinyshakespeare.txt").read_bytes()
    record = json.loads((data_dir / f"tinyshakespeare.txt.{datasets.RECORD}").read_text())
    assert record["license"] == "public domain"
    assert sorted(no_leftovers(data_dir)) == ["tinyshakespeare.txt", f"tinyshakespeare.txt.{datasets.RECORD}"]


@needs_shared("fsdd")
def test_fsdd_is_prepared_from_the_github_archive(tmp_path: Path, data_dir: Path) -> None:
    # GitHub's archive layout; speakers.csv comes from metadata.py read as a literal: the file
    # also holds code that must never run
    top = f"free-spoken-digit-dataset-{datasets.FSDD_COMMIT}"
    members = {f"{top}/recordings/{p.name}": p.read_bytes() for p in (SHARED / "fsdd/recordings").iterdir()}
    speakers = [line.split(",") for line in (SHARED / "fsdd/speakers.csv").read_text().splitlines()[1:]]
    literal = ",\n".join(
        f"    '{s}': {{\n\t'gender': '{g}',\n\t'accent': '{a}',\n\t'language': 'english'\n    }}"
        for s, g, a in speakers
    )
    canary = tmp_path / "ran"
    members[f"{top}/metadata.py"] = (
        f'"""speakers"""\nopen({str(canary)!r}, "w")\n\nmetadata = {{\n{literal}\n}}\n'
    ).encode()
    members[f"{top}/utils/fsdd.py"] = b"print('not data')"
    archive = make_zip(tmp_path / "fsdd.zip", members)
    where = datasets.fetch(datasets.get("fsdd"), file=archive)
    assert where == data_dir / "fsdd" and not canary.exists()
    assert datasets.files_sha256(where)[:2] == (datasets.get("fsdd").sha256, 3001)
    assert (where / "speakers.csv").read_bytes() == (SHARED / "fsdd/speakers.csv").read_bytes()
    assert not (where / "utils").exists()


@needs_shared("ml-100k")
def test_movielens_keeps_only_the_named_files(tmp_path: Path, data_dir: Path, run_cli: Callable) -> None:
    members = {f"ml-100k/{p.name}": p.read_bytes() for p in (SHARED / "ml-100k").iterdir()}
    members["ml-100k/u1.base"] = b"1\t1\t5\t0\n"
    members["ml-100k/allbut.pl"] = b"#!/usr/bin/perl\n"
    archive = make_zip(tmp_path / "ml-100k.zip", members)
    r = run_cli("data", "get", "movielens_100k", "--file", archive)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (data_dir / "ml-100k").iterdir()) == sorted(
        [*datasets.MOVIELENS_FILES, datasets.RECORD]
    )


# --------------------------------------------------------------------------- download: failures
def test_checksum_mismatch_is_an_error_and_keeps_nothing(
    tmp_path: Path, server: Server, data_dir: Path, invoke_cli: Callable
) -> None:
    top = "sentiment labelled sentences"
    names = ["amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt", "readme.txt"]
    members = {f"{top}/{n}": "".join(f"sentence {i}\t{i % 2}\n" for i in range(100)).encode() for n in names}
    server.files[archive_name("sentiment_labelled_sentences")] = make_zip(
        tmp_path / "s.zip", members
    ).read_bytes()
    r = invoke_cli("data", "get", "sentiment_labelled_sentences", env={"DANLU_DATASETS_MIRROR": server.url})
    assert_user_error(r, "do not match the pinned checksum", after_progress=True)
    assert no_leftovers(data_dir) == []


def test_download_checksum_mismatch_keeps_nothing(
    server: Server, data_dir: Path, invoke_cli: Callable
) -> None:
    server.files["input.txt"] = b"First Citizen:\nNot quite Shakespeare.\n"
    r = invoke_cli("data", "get", "tiny_shakespeare", env={"DANLU_DATASETS_MIRROR": server.url})
    assert_user_error(
        r, f"is not the pinned {datasets.get('tiny_shakespeare').download_sha256}", after_progress=True
    )
    assert no_leftovers(data_dir) == []


@needs_shared("ml-100k")
def test_an_archive_from_the_canonical_url_must_be_the_pinned_one(
    tmp_path: Path, server: Server, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the same files repackaged are fine from a mirror or --file (checked after extraction),
    # but from the canonical URL only the pinned archive is opened at all
    monkeypatch.delenv("DANLU_DATASETS_MIRROR", raising=False)
    members = {f"ml-100k/{p.name}": p.read_bytes() for p in (SHARED / "ml-100k").iterdir()}
    server.files["ml-100k.zip"] = make_zip(tmp_path / "ml-100k.zip", members).read_bytes()
    ds = dataclasses.replace(datasets.get("movielens_100k"), url=f"{server.url}/ml-100k.zip")
    with pytest.raises(DanluError, match=f"is not the pinned {ds.download_sha256} of dataset movielens_100k"):
        datasets.fetch(ds)
    assert no_leftovers(data_dir) == []
    monkeypatch.setenv("DANLU_DATASETS_MIRROR", server.url)
    assert datasets.fetch(datasets.get("movielens_100k")) == data_dir / "ml-100k"


def test_connection_cut_mid_file_keeps_no_partial_dataset(
    server: Server, data_dir: Path, invoke_cli: Callable
) -> None:
    server.files["input.txt"] = b"To be, or not to be: that is the question.\n" * 5000
    server.cut.add("input.txt")
    r = invoke_cli("data", "get", "tiny_shakespeare", env={"DANLU_DATASETS_MIRROR": server.url})
    assert_user_error(r, "connection closed", after_progress=True)
    assert no_leftovers(data_dir) == []


@needs_shared("tinyshakespeare.txt")
def test_a_download_killed_mid_file_is_cleaned_up_by_the_next_get(
    server: Server, data_dir: Path, run_cli: Callable
) -> None:
    # a real kill -9 while the download is half-written: the server sends half the file and
    # holds the connection; the process is killed once its temporary holds some of them
    good = (SHARED / "tinyshakespeare.txt").read_bytes()
    server.files["input.txt"] = good
    server.hold.add("input.txt")
    env = {**_env(), "DANLU_DATA": str(data_dir), "DANLU_DATASETS_MIRROR": server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "danlu", "data", "get", "tiny_shakespeare"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # the condition: bytes of the download are on disk (the tail of the half may sit in
        # the writer's buffer)
        assert wait_for(lambda: any(p.stat().st_size > 0 for p in data_dir.glob(".*.tmp/download")), proc)
    finally:
        proc.kill()
        proc.wait()
    (temp,) = data_dir.glob(".tinyshakespeare.txt.*.tmp")
    assert str(proc.pid) in temp.name  # the owner's PID is in the name
    # a live process's temporary (this test's PID) is never touched, whatever its age
    live = data_dir / f".tinyshakespeare.txt.{datasets._host()}-{os.getpid()}-live.tmp"
    live.mkdir()
    # the half-written download is never taken for the dataset
    with pytest.raises(DanluError, match="downloading"):
        datasets.ensure(datasets.get("tiny_shakespeare"), url=closed_port_url())
    assert not temp.exists() and live.exists()
    live.rmdir()
    (data_dir / f".tinyshakespeare.txt.{datasets._host()}-{proc.pid}-x.tmp").mkdir()  # another dead one
    server.hold.clear()
    r = run_cli("data", "get", "tiny_shakespeare", env={"DANLU_DATASETS_MIRROR": server.url})
    assert r.returncode == 0, r.stderr
    assert (data_dir / "tinyshakespeare.txt").read_bytes() == good
    assert no_leftovers(data_dir) == ["tinyshakespeare.txt", f"tinyshakespeare.txt.{datasets.RECORD}"]


def test_a_present_dataset_still_gets_a_dead_downloads_temporary_removed(
    data_dir: Path, run_cli: Callable
) -> None:
    # `data get` of a dataset that is present removes a killed download's leftovers too
    data_dir.mkdir()
    (data_dir / "tinyshakespeare.txt").write_bytes((SHARED / "tinyshakespeare.txt").read_bytes())
    stale = data_dir / f".tinyshakespeare.txt.{datasets._host()}-{exited_pid()}-abc.tmp"
    stale.mkdir()
    (stale / "download").write_bytes(b"half")
    other_host = data_dir / f".tinyshakespeare.txt.elsewhere-{exited_pid()}-abc.tmp"
    other_host.mkdir()  # a shared data directory: another machine's download is not ours to judge
    r = run_cli("data", "get", "tiny_shakespeare")
    assert r.returncode == 0 and "already present" in r.stdout, r.stderr
    assert not stale.exists() and other_host.exists()


def exited_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen) -> bool:
    """True once condition() holds; False if proc exits first (its stderr is then shown)."""
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "exited")
        time.sleep(0.01)  # polling a condition, not standing in for one
    return True


def test_offline_says_in_one_line_where_to_put_which_files(
    data_dir: Path, invoke_cli: Callable, tmp_path: Path
) -> None:
    r = invoke_cli(
        "train",
        ROOT / "examples" / "shakespeare_char.yaml",
        "--set",
        f"output.dir={tmp_path / 'runs'}",
        env={"DANLU_DATASETS_MIRROR": closed_port_url()},
    )
    line = assert_user_error(
        r, "data.path", "tinyshakespeare.txt", str(data_dir), runs_dir=tmp_path / "runs", after_progress=True
    )
    assert "danlu data get tiny_shakespeare --file" in line
    assert no_leftovers(data_dir) == []


def test_a_partial_copy_is_never_overwritten(data_dir: Path) -> None:
    (data_dir / "fsdd" / "recordings").mkdir(parents=True)
    (data_dir / "fsdd" / "recordings" / "0_theo_0.wav").write_bytes(b"RIFF")
    with pytest.raises(DanluError, match="holds 1 of the 3001 files of dataset fsdd"):
        config.load({"data": {"source": "fsdd"}})
    assert (data_dir / "fsdd" / "recordings" / "0_theo_0.wav").read_bytes() == b"RIFF"


def test_paths_inside_a_dataset_stay_inside(data_dir: Path) -> None:
    with pytest.raises(DanluError, match=r"no '\.', '\.\.'"):
        config.load({"data": {"path": "dataset://fsdd/../../etc/passwd"}})
    with pytest.raises(DanluError, match="unknown dataset 'fsd' \\(did you mean 'fsdd'\\?\\)"):
        config.load({"data": {"path": "dataset://fsd/recordings"}})
    assert no_leftovers(data_dir) == []


# --------------------------------------------------------------------------- the shared copies
@pytest.mark.skipif(
    not all((SHARED / ds.root).exists() for ds in datasets.DATASETS.values()),
    reason="../shared/data lacks a dataset",
)
def test_data_list_shows_the_shared_copies_present(run_cli: Callable) -> None:
    r = run_cli("data", "list")  # conftest points DANLU_DATA at ../shared/data
    assert r.returncode == 0, r.stderr
    assert f"data directory: {SHARED}" in r.stdout
    for ds in datasets.DATASETS.values():
        (row,) = [line for line in r.stdout.splitlines() if f" {ds.name} " in line]
        assert " yes " in row and str(SHARED / ds.root) in row and ds.license in row
    where = run_cli("data", "path", "fsdd")
    assert where.returncode == 0 and where.stdout.strip() == str(SHARED / "fsdd")


def test_data_list_and_path_when_absent(data_dir: Path, invoke_cli: Callable) -> None:
    r = invoke_cli("data", "list")
    assert r.exit_code == 0 and r.stdout.count(" no ") == len(datasets.DATASETS)
    assert_user_error(invoke_cli("data", "path", "fsdd"), "danlu data get fsdd")


@pytest.mark.parametrize(
    ("example", "root"),
    [
        ("fsdd_ctc", "fsdd"),
        ("fsdd_classify", "fsdd"),
        ("shakespeare_char", "tinyshakespeare.txt"),
        ("sentiment_lstm", "sentiment"),
        ("sentiment_transformer", "sentiment"),
        ("sentiment_minilm", "sentiment"),
    ],
)
def test_examples_name_their_data_and_resolve_to_the_shared_copies(example: str, root: str) -> None:
    text = (ROOT / "examples" / f"{example}.yaml").read_text(encoding="utf-8")
    assert "dataset://" in text and "shared/data" not in text
    if not (SHARED / root).exists():
        pytest.skip(f"../shared/data/{root} is absent")
    data = config.load(ROOT / "examples" / f"{example}.yaml").data
    paths = [p for p in (data.path, data.train, data.test) if p]
    assert paths and all(Path(p).exists() and Path(p).is_relative_to(SHARED) for p in paths)


@pytest.mark.slow
@needs_shared("sentiment")
def test_source_shorthand_trains_through_the_cli(write_config: Callable, run_cli: Callable) -> None:
    # data.source NAME stands for the dataset's usual files; the run keeps the resolved paths
    text = {"column": "text", "tokenizer": "word", "max_length": 32}
    cfg = write_config(
        {
            "data": {"source": "sentiment_labelled_sentences", "target": "label", "text": text},
            "model": {"type": "rnn", "embedding_dim": 16, "hidden": 16},
            "train": {"epochs": 1},
        }
    )
    r = run_cli("train", cfg)
    assert r.returncode == 0, r.stderr
    (run,) = [p for p in (cfg.parent / "runs").iterdir() if p.is_dir()]
    saved = config.read_yaml(run / "config.yaml")["data"]
    assert saved["source"] is None
    assert (saved["train"], saved["test"]) == (
        str(SHARED / "sentiment/train.csv"),
        str(SHARED / "sentiment/test.csv"),
    )


def test_a_hostile_archive_runs_nothing_and_writes_nothing_outside(tmp_path: Path, data_dir: Path) -> None:
    # metadata.py that is code rather than a literal is refused, not run; a member named to
    # climb out of the dataset is never extracted
    top = "free-spoken-digit-dataset-x"
    canary = tmp_path / "ran"
    archive = make_zip(
        tmp_path / "fsdd.zip",
        {
            f"{top}/recordings/0_theo_0.wav": b"RIFF",
            f"{top}/recordings/../../../escaped.wav": b"RIFF",
            f"{top}/metadata.py": f"metadata = open({str(canary)!r}, 'w')\n".encode(),
        },
    )
    with pytest.raises(DanluError, match="metadata.py holds no"):
        datasets.fetch(datasets.get("fsdd"), file=archive)
    assert not canary.exists() and not (tmp_path / "escaped.wav").exists()
    assert not list(tmp_path.rglob("escaped.wav"))
    assert no_leftovers(data_dir) == []
