"""Named public datasets: where each comes from, its licence, and a pinned checksum of its files.

A config names a file of one of these datasets as `dataset://NAME/path/inside` (any of
data.path, data.train, data.val, data.test), or the whole dataset as `data.source: NAME`;
config loading turns the name into a path under one data directory: $DANLU_DATA, by default
the user cache (~/.cache/danlu/data). Its layout is the one beside this repository's CI
(../shared/data): fsdd/, tinyshakespeare.txt, sentiment/, ml-100k/.

A dataset that is absent is downloaded from its canonical public location, prepared into a
temporary folder inside the data directory, verified, and renamed into place with a record
of its source and licence (danlu-dataset.json), so the data directory never holds half a
dataset. Offline, or when the download fails, one line says which files to put where.

What is pinned. For every dataset: the SHA-256 of its prepared files, taken as the SHA-256
of their `sha256sum` listing sorted by path, which coreutils reproduce:
    cd DIR && find . -type f ! -name danlu-dataset.json | sed 's|^\\./||' | LC_ALL=C sort \\
        | xargs sha256sum | sha256sum
(for a one-file dataset, the listing of that one file by its name). These were computed from
the copies in ../shared/data, and tests/test_datasets.py recomputes them there. The SHA-256
of the download itself is pinned where the canonical file is stable: Tiny Shakespeare's
download is the file itself; MovieLens' ml-100k.zip (4,924,029 bytes; GroupLens' own MD5
0e33842e... agrees) and the UCI sentiment zip are frozen archives whose SHA-256 several
independent public projects pin alike (and whose member u.data/u.item hash to the files in
../shared/data). FSDD comes from GitHub's generated archive of a commit, whose bytes GitHub
does not promise to keep, so only its extracted files are pinned. An archive from the
canonical URL must match its pinned SHA-256 before it is opened; one from a mirror
($DANLU_DATASETS_MIRROR) or a local `--file` may be a repackaging, so it is checked after
extraction, which rejects any archive whose files differ.
Only the named members of an archive are extracted, under names danlu builds itself.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import hashlib
import os
import random
import re
import shutil
import socket
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from danlu import fileio
from danlu.errors import DanluError, did_you_mean

SCHEME = "dataset://"
RECORD = "danlu-dataset.json"  # the source and licence, inside a dataset's folder (beside a file)


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    root: str  # the file or folder it is inside the data directory
    url: str  # the canonical public download
    license: str  # short; the terms are at the source (and in its record)
    citation: str
    files: int  # prepared files
    size: int  # bytes of the prepared files
    sha256: str  # of the prepared files' sha256sum listing (see the module docstring)
    layout: str  # the files a user puts in the data directory by hand
    prepare: Callable[[Path, Path], None]  # (download, destination) -> the prepared files
    default: dict[str, str] = field(default_factory=dict)  # data.source NAME -> data keys
    download_sha256: str | None = None  # of the download, where known
    folder: bool = True  # false: the dataset is one file


# --------------------------------------------------------------------------- preparation
@contextlib.contextmanager
def _archive(path: Path) -> Iterator[tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]]:
    """The zip at `path` and its files by path below the top folder (GitHub, UCI and GroupLens
    archives each hold one folder); macOS resource forks are skipped."""
    try:
        with zipfile.ZipFile(path) as z:
            members = {}
            for info in z.infolist():
                parts = info.filename.split("/")
                if info.is_dir() or len(parts) < 2 or parts[0] == "__MACOSX":
                    continue
                members["/".join(parts[1:])] = info
            yield z, members
    except zipfile.BadZipFile as e:
        raise DanluError(f"{path}: not a readable zip archive ({e})") from None


def _extract(z: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], name: str, dest: Path) -> None:
    if name not in members:
        raise DanluError(f"{z.filename}: the archive has no file '{name}'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with z.open(members[name]) as src, dest.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _prepare_fsdd(download: Path, dest: Path) -> None:
    """recordings/*.wav as they are; speakers.csv from the repository's metadata.py, read as
    a literal (never run)."""
    with _archive(download) as (z, members):
        wavs = [m for m in members if re.fullmatch(r"recordings/\d_[a-z]+_\d+\.wav", m)]
        for m in wavs:
            _extract(z, members, m, dest / m)
        if "metadata.py" not in members:
            raise DanluError(f"{download}: the archive has no metadata.py")
        source = z.read(members["metadata.py"]).decode("utf-8")
    try:
        speakers = None
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
                "metadata"
            ]:
                speakers = ast.literal_eval(node.value)
        rows = [[name, m["gender"], m["accent"]] for name, m in speakers.items()]  # type: ignore[union-attr]
    except (SyntaxError, ValueError, AttributeError, KeyError, TypeError) as e:
        raise DanluError(
            f"{download}: metadata.py holds no `metadata = {{speaker: {{gender, accent}}}}` literal ({e!r})"
        ) from None
    with (dest / "speakers.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["speaker", "gender", "accent"])
        w.writerows(rows)


def _prepare_text(download: Path, dest: Path) -> None:
    shutil.copyfile(download, dest)


SENTIMENT_SOURCES = (
    ("amazon", "amazon_cells_labelled.txt"),
    ("imdb", "imdb_labelled.txt"),
    ("yelp", "yelp_labelled.txt"),
)
SENTIMENT_SEED = 20261124


def _prepare_sentiment(download: Path, dest: Path) -> None:
    """The UCI files under source/, and danlu's fixed 80/20 split of their 3,000 sentences:
    rows in file order (amazon, imdb, yelp), shuffled by Python's random.Random(20261124),
    the first 2,400 to train.csv, the rest to test.csv (csv module defaults, CRLF lines)."""
    with _archive(download) as (z, members):
        for _, name in (*SENTIMENT_SOURCES, ("", "readme.txt")):
            _extract(z, members, name, dest / "source" / name)
    split_sentiment(dest / "source", dest)


def split_sentiment(source: Path, dest: Path) -> None:
    rows = []
    for label_source, name in SENTIMENT_SOURCES:
        with (source / name).open(encoding="utf-8", newline="") as f:
            for i, line in enumerate(f, 1):
                text, tab, label = line.rstrip("\r\n").rpartition("\t")
                if not tab:
                    raise DanluError(f"{source / name}: line {i} has no tab before its label")
                rows.append([text.strip(), label.strip(), label_source])
    random.Random(SENTIMENT_SEED).shuffle(rows)
    n_train = len(rows) * 4 // 5
    for name, part in (("train.csv", rows[:n_train]), ("test.csv", rows[n_train:])):
        with (dest / name).open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "source"])
            w.writerows(part)


MOVIELENS_FILES = (
    "README",
    "u.data",
    "u.genre",
    "u.info",
    "u.item",
    "u.occupation",
    "u.user",
    "ua.base",
    "ua.test",
)


def _prepare_movielens(download: Path, dest: Path) -> None:
    """The ratings, the item/user tables and the standard ua split (10 test ratings a user)."""
    with _archive(download) as (z, members):
        for name in MOVIELENS_FILES:
            _extract(z, members, name, dest / name)


# --------------------------------------------------------------------------- the registry
FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
CHAR_RNN_COMMIT = "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="fsdd",
            title="Free Spoken Digit Dataset: 3,000 recordings of the digits 0-9 by 6 speakers (8 kHz WAV)",
            root="fsdd",
            url=f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.zip",
            license="CC BY-SA 4.0",
            citation=f"Zohar Jackson et al., Jakobovski/free-spoken-digit-dataset @ {FSDD_COMMIT[:8]}",
            files=3001,
            size=21_129_010,
            sha256="8f9614871d7ce5c30bd13f61dd86adf0b6b693f71111b09f00c98be999ee23d1",
            layout="fsdd/recordings/*.wav (the repository's 3,000 recordings) and fsdd/speakers.csv",
            prepare=_prepare_fsdd,
            default={"path": "recordings"},
        ),
        Dataset(
            name="tiny_shakespeare",
            title="Tiny Shakespeare: 40,000 lines of Shakespeare's plays (UTF-8 text)",
            root="tinyshakespeare.txt",
            url=f"https://raw.githubusercontent.com/karpathy/char-rnn/{CHAR_RNN_COMMIT}/data/tinyshakespeare/input.txt",
            license="public domain",
            citation=f"karpathy/char-rnn @ {CHAR_RNN_COMMIT[:8]}, data/tinyshakespeare/input.txt",
            files=1,
            size=1_115_394,
            sha256="e057e6e178b3f282683ca3d9f958bb1d679d8e6e318911fbc34e8b3dbaf598e7",
            layout="tinyshakespeare.txt (char-rnn's data/tinyshakespeare/input.txt)",
            prepare=_prepare_text,
            default={"path": ""},
            folder=False,
            # the download is the file: its SHA-256 is that of ../shared/data/tinyshakespeare.txt
            download_sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
        Dataset(
            name="sentiment_labelled_sentences",
            title="3,000 review sentences (Amazon, IMDb, Yelp) labelled positive/negative; 80/20 split",
            root="sentiment",
            url="https://archive.ics.uci.edu/static/public/331/sentiment+labelled+sentences.zip",
            license="CC BY 4.0 (UCI)",
            citation="Kotzias et al., 'From Group to Individual Labels using Deep Features', KDD 2015",
            files=6,
            size=430_375,
            sha256="51f8bab2e5c254c6e5f970259c8c01edc961ce77c7ddc0bcd5efa7c49a20b64e",
            layout="sentiment/source/{amazon_cells,imdb,yelp}_labelled.txt and readme.txt from the UCI zip"
            " (train.csv and test.csv are made from them)",
            prepare=_prepare_sentiment,
            default={"train": "train.csv", "test": "test.csv"},
            download_sha256="afc26626d710899948693e1a61405dce197f57ffa719fa1130d346b4cc095343",
        ),
        Dataset(
            name="movielens_100k",
            title="MovieLens 100K: 100,000 ratings (1-5) by 943 users on 1,682 movies",
            root="ml-100k",
            url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
            license="GroupLens (non-commercial)",
            citation="F. M. Harper, J. A. Konstan, 'The MovieLens Datasets', ACM TiiS 5(4), 2015",
            files=len(MOVIELENS_FILES),
            size=4_224_499,
            sha256="ca8d277e069ff9644e0b28ecbc0ce46c0059419176c224e37106079a7f391b83",
            layout="ml-100k/{" + ",".join(MOVIELENS_FILES) + "} from ml-100k.zip",
            prepare=_prepare_movielens,
            default={"path": ""},
            download_sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        ),
    )
}


def get(name: str) -> Dataset:
    if name not in DATASETS:
        raise DanluError(
            f"unknown dataset '{name}'{did_you_mean(name, DATASETS)}; valid: {', '.join(DATASETS)}"
        )
    return DATASETS[name]


# --------------------------------------------------------------------------- where and whether
def data_dir() -> Path:
    """$DANLU_DATA, else the user cache's data folder (~/.cache/danlu/data)."""
    env = os.environ.get("DANLU_DATA")
    return (Path(env).expanduser() if env else fileio.user_cache("data")).absolute()


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        (p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() != RECORD),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def files_sha256(root: Path) -> tuple[str, int, int]:
    """(SHA-256 of the sha256sum listing, number of files, bytes) of a file or folder."""
    listing, size = [], 0
    for p in _files(root):
        rel = p.name if p == root else p.relative_to(root).as_posix()
        listing.append(f"{_sha256(p)}  {rel}\n")
        size += p.stat().st_size
    return hashlib.sha256("".join(listing).encode()).hexdigest(), len(listing), size


def status(ds: Dataset, directory: Path | None = None) -> tuple[Path, int]:
    """(where it is, how many of its files are there): cheap, no checksums."""
    where = (directory or data_dir()) / ds.root
    if not where.exists():
        return where, 0
    return where, len(_files(where))


def record_path(ds: Dataset, where: Path) -> Path:
    return where / RECORD if ds.folder else where.with_name(f"{where.name}.{RECORD}")


def resolve(ref: str) -> Path:
    """dataset://NAME[/path/inside] -> that path in the data directory, downloading the
    dataset first when it is absent. dataset://NAME alone is the dataset's folder (or file)."""
    name, _, inside = ref.removeprefix(SCHEME).partition("/")
    ds = get(name)
    parts = [p for p in inside.split("/") if p]
    if any(p in (".", "..") for p in parts) or "\\" in inside:
        raise DanluError(f"{ref}: a path inside a dataset has no '.', '..' or '\\' parts")
    root = ensure(ds)
    # a one-file dataset is named by itself or by its file name
    path = root if not ds.folder and parts in ([], [root.name]) else root.joinpath(*parts)
    if not path.exists():
        there = sorted(p.name for p in root.iterdir()) if root.is_dir() else [root.name]
        raise DanluError(f"{ref}: no such file in dataset {name} ({root}); it holds: {', '.join(there)}")
    return path


def ensure(
    ds: Dataset, directory: Path | None = None, url: str | None = None, file: Path | None = None
) -> Path:
    """The dataset's path, downloaded (or prepared from `file`) first when it is absent."""
    directory = directory or data_dir()
    remove_stale_temps(directory)
    where, n = status(ds, directory)
    if n == ds.files:
        return where
    if where.exists():  # someone's partial copy: never overwritten
        raise DanluError(
            f"{where} holds {n} of the {ds.files} files of dataset {ds.name}; complete it ({ds.layout})"
            f" or remove it so that danlu downloads it"
        )
    return fetch(ds, directory, url=url, file=file)


# --------------------------------------------------------------------------- temporaries
# A download is prepared in `.ROOT.HOST-PID-XXXX.tmp` inside the data directory and renamed
# into place whole, so a dataset folder is never half-prepared; a kill -9 leaves only such a
# temporary, which the next use removes once its owner (this host, that PID) is gone. No
# age or timing rule: a live owner's temporary is never touched, whatever its age.
_TEMP = re.compile(r"^\.(?P<root>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _owner() -> str:
    return f"{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temporaries of downloads whose process died on this host (a kill -9,
    a power cut); another host's (a shared data directory) and a live process's are kept."""
    removed = []
    with contextlib.suppress(OSError):  # absent or unreadable: nothing of ours to remove
        for p in directory.iterdir():
            m = _TEMP.match(p.name)
            if m and m["host"] == _host() and not _alive(int(m["pid"])):
                fileio.remove(p)
                removed.append(p)
    return removed


# --------------------------------------------------------------------------- download
def _mirror_url(ds: Dataset) -> str:
    # $DANLU_DATASETS_MIRROR: a folder (URL) holding the downloads under their own file names;
    # what comes from it is checked against the same pinned checksums
    mirror = os.environ.get("DANLU_DATASETS_MIRROR")
    if not mirror:
        return ds.url
    return f"{mirror.rstrip('/')}/{ds.url.rsplit('/', 1)[-1]}"


def fetch(
    ds: Dataset, directory: Path | None = None, url: str | None = None, file: Path | None = None
) -> Path:
    """Download (or take `file`), prepare, verify and rename the dataset into the data
    directory; on any failure nothing of it is left there."""
    directory = directory or data_dir()
    url = url or _mirror_url(ds)
    try:
        if directory == fileio.user_cache("data").absolute():
            fileio.make_user_cache("data")  # danlu's own cache: 0700, refused when not ours
        directory.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{ds.root}.{_owner()}-", suffix=".tmp", dir=directory))
    except OSError as e:
        raise DanluError(f"cannot write into the data directory {directory} ({e}); set DANLU_DATA") from None
    target = directory / ds.root
    origin = url if file is None else str(file)
    try:
        if file is None:
            download = work / "download"
            _download(url, download, ds, directory)
        else:
            download = Path(file)
            if not download.is_file():
                raise DanluError(f"{file}: no such file")
        # a mirror's or a local file's archive may be a repackaging of the same files: those
        # are checked after extraction; a one-file dataset's download is its content
        canonical = file is None and url == ds.url
        if ds.download_sha256 is not None and (canonical or not ds.folder):
            got = _sha256(download)
            if got != ds.download_sha256:
                raise DanluError(
                    f"{origin}: SHA-256 {got} is not the pinned {ds.download_sha256} of dataset {ds.name};"
                    f" nothing was kept in {directory}"
                )
        prepared = work / ds.root
        if ds.folder:
            prepared.mkdir()
        ds.prepare(download, prepared)
        digest, n, _ = files_sha256(prepared)
        if digest != ds.sha256 or n != ds.files:
            raise DanluError(
                f"{origin}: the prepared files of dataset {ds.name} ({n} files, SHA-256 {digest[:16]}...)"
                f" do not match the pinned checksum ({ds.files} files, {ds.sha256[:16]}...);"
                f" nothing was kept in {directory}"
            )
        record = {
            "name": ds.name,
            "title": ds.title,
            "source": origin,
            "canonical_url": ds.url,
            "license": ds.license,
            "citation": ds.citation,
            "files_sha256": ds.sha256,
            "prepared": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if ds.folder:
            fileio.write_json(prepared / RECORD, record)
            try:
                prepared.rename(target)  # atomic; refuses an existing folder
            except OSError:
                if status(ds, directory)[1] != ds.files:  # not another process's complete copy
                    raise
        else:
            os.replace(prepared, target)
            fileio.write_json(record_path(ds, target), record)
    except OSError as e:
        raise DanluError(f"cannot write dataset {ds.name} into {directory} ({e}); nothing was kept") from None
    except (ValueError, EOFError, zlib.error) as e:  # undecodable text, a damaged zip member
        raise DanluError(
            f"{origin}: cannot prepare dataset {ds.name} ({e}); nothing was kept in {directory}"
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, ds: Dataset, directory: Path) -> None:
    import http.client
    import urllib.request

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from danlu import __version__

    def failed(reason: str) -> DanluError:
        return DanluError(
            f"dataset {ds.name} is not in {directory} and downloading {url} failed ({reason}); put"
            f" {ds.layout} into {directory} (or set DANLU_DATA to a folder holding them), or download"
            f" {ds.url} elsewhere and run `danlu data get {ds.name} --file FILE`"
        )

    console = Console(stderr=True)
    console.print(f"downloading dataset {ds.name} ({ds.license}) from {url}", highlight=False, soft_wrap=True)
    limit = 4 * ds.size + (1 << 20)  # a zip is no larger than its files plus headers
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"danlu/{__version__}"})
        with urllib.request.urlopen(request, timeout=30) as resp, dest.open("wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            columns = (TextColumn(ds.name), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=console) as progress:
                task = progress.add_task(ds.name, total=total)
                while chunk := resp.read(1 << 16):
                    done += len(chunk)
                    if done > limit:
                        raise failed(f"more than {limit:,} bytes, far more than the dataset")
                    out.write(chunk)
                    progress.advance(task, len(chunk))
            if total is not None and done != total:
                raise failed(f"the connection closed after {done:,} of {total:,} bytes")
    except http.client.IncompleteRead as e:
        raise failed(f"the connection closed after {len(e.partial):,} bytes of a chunk") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # no route, 404, timeout, bad URL
        raise failed(str(getattr(e, "reason", None) or e)) from None
