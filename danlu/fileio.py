"""Atomic file writes: a reader never sees a half-written file.

Everything danlu writes goes to a temporary file in the target folder first and is
renamed into place (rename is atomic on POSIX within one filesystem). Also where danlu
keeps what it can rebuild (`user_cache`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from danlu.errors import DanluError


def user_cache(name: str) -> Path:
    """danlu's cache folder `name` for this user: $XDG_CACHE_HOME/danlu/NAME, by default
    ~/.cache/danlu/NAME (not created here)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "danlu" / name


def make_user_cache(name: str = "") -> Path:
    """user_cache(name), created (name "": danlu/ itself). danlu/ and NAME are made 0700 where
    danlu makes them (the cache root above, e.g. ~/.cache, as any folder). One that exists
    keeps its mode, but one that is not the user's own (planted in a shared $XDG_CACHE_HOME) is
    refused with an OSError (EPERM) naming it: danlu would load from it or write into it."""
    base = user_cache("")  # $XDG_CACHE_HOME/danlu
    base.parent.mkdir(parents=True, exist_ok=True)
    for folder in (base, base / name) if name else (base,):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        owner = os.stat(folder).st_uid
        if hasattr(os, "getuid") and owner != os.getuid():
            why = f"not yours (owner uid {owner}), so danlu does not use it"
            raise PermissionError(errno.EPERM, why, str(folder))
    return base / name if name else base


def remove(path: Path) -> None:
    """Remove a file or a folder tree (never following a link into a folder); gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`."""
    path = Path(path)
    if path.is_dir():
        raise DanluError(f"{path}: is a directory; give the path of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a parent that is a file, a read-only or missing mount, no permission
        raise cannot_write(path, e) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp made it 0600; give it the mode open() would (0666 less the umask), so a
        # colleague the umask lets read a shared run folder can read it
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # the old file, if any, is untouched: nothing half-written is left
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise cannot_write(path, e) from None
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (an existing one
    is moved aside first, then removed): a reader sees the old folder or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        raise


@functools.cache
def _umask() -> int:
    """The process umask, read once. Linux shows it in /proc; elsewhere setting and
    restoring it is the only way to read it (done once, before danlu starts threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def cannot_write(path: Path, e: OSError, more: str = "") -> DanluError:
    """The one line for a write that failed: the file, the OS's reason, and on a full disk
    what to do; `more` is added before the hint (e.g. what was kept)."""
    hint = "; free some space and run again" if e.errno in DISK_FULL else ""
    return DanluError(f"{path}: cannot write: {e.strerror or e}{more}{hint}")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    # numpy scalars and arrays show up in metrics; write them as plain numbers
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
