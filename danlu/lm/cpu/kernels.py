"""danlu's own CPU kernels for decoding steps (danlu/lm/cpu/kernels.c): build, cache, load, call.

Decoding one token reads every weight once, so its speed is memory bandwidth. torch's
float32 matrix-vector product (MKL) streams weights on one core, and without AVX-512 bf16
instructions its bfloat16 path is slower still; the C `linear` streams on all of torch's
threads and converts bf16 in registers. `block_step` runs a whole GPT block for one new
token per row in one call, since at these sizes the ~25 torch ops of a block cost as much
time as their arithmetic. The C file is compiled with the system's C compiler the first
time it is needed and cached by source and CPU; with no compiler, no AVX2/FMA, or
DANLU_CPU_KERNELS=0, neither is called and torch does the work (same results up to float32
rounding).

The compiler is $CC when set (a program on PATH or a path), else `cc` or `gcc`. The cache is
$XDG_CACHE_HOME/danlu/kernels (default ~/.cache/danlu/kernels), created 0700, and loading a
shared library runs its code, so: the folder must be the user's own, not a symbolic link and
not writable by group or others (otherwise torch does the work, with a one-line warning); a
cached .so that is a symbolic link, not the user's, or writable by group or others is never
loaded but rebuilt; a new one is compiled in a private temporary folder, copied into the
cache under a temporary name and renamed into place; and what is loaded is the very file
that was checked (opened once, without following links, and loaded through that descriptor).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import mmap
import os
import platform
import secrets
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from danlu import fileio

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
MAX_ROWS = 16  # the kernel's tiles pay off for a few rows; larger batches go to MKL's gemm
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_signature() -> str:
    """-march=native code must not run on another CPU sharing the same cache folder."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _kernel_name(compiler: str) -> str:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + compiler.encode() + _cpu_signature().encode() + torch.__version__.encode())
    return f"cpu_kernels-{key.hexdigest()[:16]}.so"


def _refuse(why: str) -> None:
    log.warning("danlu CPU kernels: %s", why)


def _cache_folder() -> tuple[Path, int] | None:
    """The kernel cache folder, created 0700, and an open descriptor of it; None where it is
    missing and cannot be made, or is not safe to load code from."""
    folder = fileio.user_cache("kernels")
    try:
        fileio.make_user_cache("")  # $XDG_CACHE_HOME/danlu: created 0700, refused when not ours
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _refuse(f"{folder} is a symbolic link or not a folder; torch does the work")
        elif exc.errno == errno.EPERM:
            _refuse(f"{exc.filename}: {exc.strerror}; torch does the work")
        else:  # a read-only or missing home: nothing to warn about
            log.debug("no danlu kernel cache (%s): torch does the work", exc)
        return None
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        os.close(fd)
        _refuse(
            f"{folder} must be yours and writable by you alone (it is {stat.filemode(st.st_mode)},"
            f" owner uid {st.st_uid}); torch does the work. Fix: chmod 700 {folder}"
        )
        return None
    return folder, fd


def _open_cached(folder: Path, dir_fd: int, name: str) -> int | None:
    """A descriptor of the cached library `name` when it is safe to load: a regular file (not
    a link: never followed), the user's, writable by no one else. None when absent or refused."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        _refuse(f"not loading {folder / name} ({exc.strerror}); building it anew")
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        os.close(fd)
        _refuse(
            f"not loading {folder / name}: {stat.filemode(st.st_mode)}, owner uid {st.st_uid}"
            " (it must be your own file, writable by you alone); building it anew"
        )
        return None
    return fd


def _compile(compiler: str, dir_fd: int, name: str) -> None:
    """Compile in a private temporary folder, then copy into the cache under a temporary name
    and rename: concurrent processes never load half a file, and nothing else writes there."""
    with tempfile.TemporaryDirectory(prefix="danlu-kernels-") as work:
        out = Path(work) / name
        cmd = [compiler, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(SOURCE), "-lm"]
        subprocess.run([*cmd, "-o", str(out)], check=True, capture_output=True, timeout=120)
        data = out.read_bytes()
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o700, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _open_library() -> ctypes.CDLL | None:
    """The kernel library from the cache, built first where it is missing or was refused."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        return None
    found = _cache_folder()
    if found is None:
        return None
    folder, dir_fd = found
    name = _kernel_name(compiler)
    try:
        fd = _open_cached(folder, dir_fd, name)
        if fd is None:
            try:
                _compile(compiler, dir_fd, name)
            except (OSError, subprocess.SubprocessError) as exc:  # no compiler, a read-only cache, ...
                log.debug("danlu CPU kernels not built (%s): torch does the work", exc)
                return None
            fd = _open_cached(folder, dir_fd, name)
            if fd is None:
                return None
        try:
            # the descriptor's own file: what was checked is what is loaded, whatever the
            # folder holds by now
            proc = f"/proc/self/fd/{fd}"
            return ctypes.CDLL(proc if os.path.exists(proc) else str(folder / name))
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("DANLU_CPU_KERNELS", "1") == "0":
        return None
    try:
        lib = _open_library()
    except OSError as exc:
        log.debug("danlu CPU kernels not loaded (%s)", exc)
        return None
    if lib is None or lib.danlu_simd() != 1:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.danlu_linear.argtypes = [p, p, p, p, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.danlu_linear.restype = ctypes.c_int
    lib.danlu_gelu.argtypes = [p, p, i64, ctypes.c_int]
    lib.danlu_gelu.restype = ctypes.c_int
    lib.danlu_block_scratch.argtypes = [i64, i64, i64, i64]
    lib.danlu_block_scratch.restype = i64
    ints = [i64] * 6  # scratch length, rows, n_embd, heads, cache length, position
    lib.danlu_block_step.argtypes = [p, p, p, p, p, i64, p, *ints, ctypes.c_float, ctypes.c_int, ctypes.c_int]
    lib.danlu_block_step.restype = ctypes.c_int
    lib.danlu_linear_q8.argtypes = [p, p, p, p, p, i64, i64, i64]
    lib.danlu_linear_q8.restype = ctypes.c_int
    lib.danlu_q8_isa.restype = ctypes.c_int
    _lib = lib
    return _lib


def available() -> bool:
    return _load() is not None


_FLAG = {torch.float32: 0, torch.bfloat16: 1}
_HUGE_PAGE = 2 << 20


def huge_page_copies(tensors: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """Copies of CPU `tensors`, packed into one anonymous mapping that Linux may back with 2 MB
    pages (transparent huge pages; a decoding step then walks 512x fewer page-table entries
    streaming its weights, 4-8% faster here); None where that cannot be asked for."""
    if not hasattr(mmap, "MADV_HUGEPAGE") or any(t.device.type != "cpu" for t in tensors):
        return None
    offsets, total = [], 0
    for t in tensors:
        total = -(-total // 64) * 64  # each tensor 64-byte aligned, as torch's allocator does
        offsets.append(total)
        total += t.numel() * t.element_size()
    try:
        # one spare huge page, so the tensors can start on a 2 MB boundary
        buffer = mmap.mmap(-1, total + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError) as exc:
        log.debug("no huge pages for the weights (%s)", exc)
        return None
    raw = torch.frombuffer(buffer, dtype=torch.uint8)  # keeps the mapping alive
    start = -raw.data_ptr() % _HUGE_PAGE
    copies = []
    for t, offset in zip(tensors, offsets, strict=True):
        n = t.numel() * t.element_size()
        copy = raw[start + offset : start + offset + n].view(t.dtype).view(t.shape)
        copy.copy_(t)
        copies.append(copy)
    return copies


def usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> bool:
    """Whether `linear` handles this call: few rows on CPU, contiguous weights, no autograd
    (the kernel has no backward), and float32 or bfloat16 throughout or bfloat16 weights
    with float32 activations (the bias in the activations' dtype)."""
    # called for every layer of every decoding step: cheap tests first, no device objects
    if rows > MAX_ROWS or not x.is_cpu or not weight.is_cpu or x.dtype not in _FLAG:
        return False
    if weight.dtype is not x.dtype and weight.dtype is not torch.bfloat16:
        return False
    if not weight.is_contiguous():
        return False
    if bias is not None and (bias.dtype is not x.dtype or not bias.is_contiguous()):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return _lib is not None or available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear for the calls `usable` accepts, in the activations' dtype."""
    assert _lib is not None
    k, n = x.shape[-1], weight.shape[0]
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    y = torch.empty(x2.shape[0], n, dtype=x.dtype)
    _lib.danlu_linear(
        x2.data_ptr(),
        weight.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        x2.shape[0],
        n,
        k,
        _FLAG[x.dtype],
        _FLAG[weight.dtype],
    )
    return y if x.dim() == 2 else y.view(*x.shape[:-1], n)


def linear_q8(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x @ (scales * qweight).T + bias for float32 `x` (..., K) of at most MAX_ROWS rows, int8
    `qweight` (N, K) and float32 `scales` (N, K / 32), all contiguous on the CPU (see
    danlu.lm.cpu.quant.Int8Linear, which checks that before calling)."""
    assert _lib is not None
    k, n = x.shape[-1], qweight.shape[0]
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    y = torch.empty(x2.shape[0], n, dtype=torch.float32)
    status = _lib.danlu_linear_q8(
        x2.data_ptr(),
        qweight.data_ptr(),
        scales.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        x2.shape[0],
        n,
        k,
    )
    assert status == 0, "danlu_linear_q8 declined a call Int8Linear checked"
    return y if x.dim() == 2 else y.view(*x.shape[:-1], n)


def q8_isa() -> str:
    """Which instructions multiply int8 weights: "avx512", "avx2", or "torch" (no kernel)."""
    if _lib is None and not available():
        return "torch"
    assert _lib is not None
    return {1: "avx512", 0: "avx2"}.get(_lib.danlu_q8_isa(), "torch")


class BlockWeights(ctypes.Structure):
    """Pointers to one GPT block's parameters, in the order of `danlu_block` in the C file."""

    _fields_ = [
        (name, ctypes.c_void_p)
        for name in (
            "ln1_w", "ln1_b", "ln2_w", "ln2_b",
            "attn_w", "proj_w", "fc_w", "mlp_proj_w",
            "attn_b", "proj_b", "fc_b", "mlp_proj_b",
            "attn_s", "proj_s", "fc_s", "mlp_proj_s",
        )
    ]  # fmt: skip


@dataclass(frozen=True)
class BlockStep:
    """What `block_step` needs of one GPT block, gathered once per generation: looking up
    the block's 12 parameters through torch modules costs more than the C step of a small
    model. `tensors` keeps the memory behind the pointers alive."""

    weights: BlockWeights
    tensors: tuple[torch.Tensor, ...]
    eps: float
    tanh_gelu: bool
    weight_kind: int  # 0 float32, 1 bfloat16, 2 int8 with scales (kernels.c W_F32, W_BF16, W_INT8)


_WEIGHT_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}


def prepare_block(
    norms: list[torch.Tensor | None],
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    eps: float,
    tanh_gelu: bool,
    scales: list[torch.Tensor] | None = None,
) -> BlockStep | None:
    """The `BlockStep` of a block, or None where the C step cannot use its tensors: norms
    (ln_1 weight, ln_1 bias, ln_2 weight, ln_2 bias) and biases (c_attn, attn c_proj, c_fc,
    mlp c_proj; None without) in float32, weights (same order) all float32, all bfloat16, or
    all int8 with their float32 `scales` (groups of 32 along rows whose length is a multiple
    of 32: danlu.lm.cpu.quant), every tensor contiguous on the CPU."""
    if _lib is None and not available():
        return None
    dtype = weights[0].dtype
    if (
        norms[0] is None
        or norms[2] is None
        or dtype not in _WEIGHT_KIND
        or any(w.dtype is not dtype or not w.is_contiguous() or not w.is_cpu for w in weights)
    ):
        return None
    if dtype is torch.int8:
        if scales is None or any(
            w.shape[1] % 32 or s.shape != (w.shape[0], w.shape[1] // 32)
            for w, s in zip(weights, scales, strict=True)
        ):
            return None
    else:
        scales = None
    small = [t for t in (*norms, *biases, *(scales or [])) if t is not None]
    if any(t.dtype is not torch.float32 or not t.is_contiguous() or not t.is_cpu for t in small):
        return None
    tensors = (*norms, *weights, *biases, *(scales or [None] * 4))
    pointers = BlockWeights(*(None if t is None else t.data_ptr() for t in tensors))
    kept = tuple(t for t in tensors if t is not None)
    return BlockStep(pointers, kept, eps, tanh_gelu, _WEIGHT_KIND[dtype])


def gelu(x: torch.Tensor, tanh_form: bool) -> torch.Tensor:
    """The C step's GELU of a float32 tensor (to test it against F.gelu)."""
    assert _lib is not None
    x = x.contiguous()
    y = torch.empty_like(x)
    _lib.danlu_gelu(x.data_ptr(), y.data_ptr(), x.numel(), int(tanh_form))
    return y


def block_scratch(rows: int, n_embd: int, n_head: int, pos: int) -> torch.Tensor:
    """Work memory for `block_step` at key position `pos`; one serves every block of a step."""
    assert _lib is not None
    return torch.empty(_lib.danlu_block_scratch(rows, n_embd, n_head, pos), dtype=torch.float32)


def block_step(
    block: BlockStep,
    x: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
    key_mask: torch.Tensor | None,
    scratch: torch.Tensor,
) -> bool:
    """Block.forward for one new token per row, in place on `x` (rows, 1, C) float32 and
    contiguous, with the step's keys and values written into the (rows, heads, length, C /
    heads) float32 caches at `pos`. key_mask: (rows, >= pos + 1) uint8, 1 where a key may be
    seen, or None for every key. False, with nothing done, where the C step declined."""
    assert _lib is not None
    rows, _, c = x.shape
    status = _lib.danlu_block_step(
        ctypes.byref(block.weights),
        x.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        None if key_mask is None else key_mask.data_ptr(),
        0 if key_mask is None else key_mask.stride(0),
        scratch.data_ptr(),
        scratch.numel(),
        rows,
        c,
        k_cache.shape[1],
        k_cache.shape[2],
        pos,
        block.eps,
        int(block.tanh_gelu),
        block.weight_kind,
    )
    return status == 0
