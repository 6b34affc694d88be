"""Batched ragged greedy matching (the OP-GRPO coverage count).

A batch holds ``N`` similarity matrices packed row-major into one 1-D tensor: block ``i`` is
the ``(n_rows[i], n_cols[i])`` matrix ``sims[sim_offsets[i]:sim_offsets[i + 1]]``. Per block,
greedy matching repeatedly takes the largest remaining entry (ties: the first in row-major
order); while it is ``>= threshold`` it counts a match and removes that entry's row and column,
otherwise it stops. The result is the match count per block; empty blocks give 0.

Every implementation compares in float32: bf16/fp16 sims are upcast first (exact), fp64 sims
are rounded to float32, and the threshold is rounded to float32 (so ``0.7`` means
``float32(0.7)`` everywhere, never ``bfloat16(0.7)``).

Implementations, all exactly equal, ties included:

* :func:`greedy_match_python` - plain Python on nested lists, the literal algorithm;
* :func:`greedy_match_reference` - PyTorch, one argmax per match;
* ``torch.ops.opgrpo_fast.greedy_match`` - the C++ core (``opgrpo_fast._C``) on CPU, the CUDA
  kernel (one warp per block) on CUDA when compiled in.

:func:`greedy_match` validates and dispatches (see :mod:`opgrpo_fast.ops._dispatch`).
"""
from __future__ import annotations

import functools
import math
import warnings
from array import array
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _dispatch

__all__ = ["greedy_match", "greedy_match_reference", "greedy_match_python"]


def _f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (overflow -> +-inf), as a Python float."""
    return array("f", [x])[0]


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("greedy_match: threshold is NaN")
    return threshold


def greedy_match_python(mats: Sequence[Sequence[Sequence[float]]], threshold: float = 0.7) -> list[int]:
    """Plain-Python greedy matching: the literal repeated-argmax algorithm.

    Args:
        mats: a list of matrices, each a list of rows (lists of floats, all rows the same
            length; ``[]`` is an empty matrix). Values and threshold are rounded to float32
            first, like every other implementation.
        threshold: a match needs a similarity ``>= threshold``.

    Returns:
        ``list[int]``, the number of matches of each matrix.
    """
    thr = _f32(_check_threshold(threshold))
    counts = []
    for mat in mats:
        m = [array("f", row).tolist() for row in mat]
        if any(v != v for row in m for v in row):
            raise ValueError("greedy_match: sims contains NaN")
        rows = list(range(len(m)))
        cols = list(range(len(m[0]))) if m else []
        count = 0
        while rows and cols:
            best_v, best_r, best_c = m[rows[0]][cols[0]], rows[0], cols[0]
            for r in rows:  # row-major scan, strict >: the first maximum wins
                for c in cols:
                    if m[r][c] > best_v:
                        best_v, best_r, best_c = m[r][c], r, c
            if not best_v >= thr:
                break
            count += 1
            rows.remove(best_r)
            cols.remove(best_c)
        counts.append(count)
    return counts


def greedy_match_reference(
    sims: Tensor, sim_offsets: Tensor, n_rows: Tensor, n_cols: Tensor, threshold: float = 0.7
) -> Tensor:
    """Pure-PyTorch greedy matching (a Python loop over blocks, one argmax per match).

    ``torch.argmax`` returns the first maximal index of the flattened remaining sub-matrix,
    and the remaining rows/columns are kept in increasing order, so ties resolve to the first
    entry in row-major order. Removed rows/columns are dropped (never masked with a value),
    so any value, -inf included, is handled.

    Args:
        sims: ``(S,)`` floating tensor, the blocks packed row-major.
        sim_offsets: ``(N + 1,)`` integer tensor, ``sim_offsets[0] == 0``,
            ``sim_offsets[i + 1] - sim_offsets[i] == n_rows[i] * n_cols[i]``.
        n_rows, n_cols: ``(N,)`` integer tensors.
        threshold: a match needs a similarity ``>= threshold`` (compared in float32).

    Returns:
        ``(N,)`` int64 tensor on ``sims.device``: matches per block.
    """
    thr = torch.tensor(_check_threshold(threshold), dtype=torch.float32, device=sims.device)
    sims32 = sims.to(torch.float32)
    offs, rows, cols = sim_offsets.tolist(), n_rows.tolist(), n_cols.tolist()
    counts = []
    for i, (r_n, c_n) in enumerate(zip(rows, cols)):
        block = sims32[offs[i] : offs[i + 1]].view(r_n, c_n)
        live_r = torch.arange(r_n, device=sims.device)
        live_c = torch.arange(c_n, device=sims.device)
        count = 0
        while live_r.numel() and live_c.numel():
            sub = block.index_select(0, live_r).index_select(1, live_c)
            k = int(torch.argmax(sub))
            if not bool(sub.reshape(-1)[k] >= thr):
                break
            r, c = divmod(k, live_c.numel())
            live_r = torch.cat([live_r[:r], live_r[r + 1 :]])
            live_c = torch.cat([live_c[:c], live_c[c + 1 :]])
            count += 1
        counts.append(count)
    return torch.tensor(counts, dtype=torch.int64, device=sims.device)


# ---- custom op -----------------------------------------------------------------------------


@functools.cache
def _cuda_kernel_usable() -> bool:
    """Whether the compiled CUDA kernel can run in this process (checked once)."""
    if not _dispatch.HAS_C_CUDA:
        return False
    count, error = _dispatch._C.cuda_device_count()
    if count <= 0:
        warnings.warn(
            f"opgrpo_fast: the CUDA greedy kernel cannot start ({error or 'no device'}); "
            "greedy_match uses the PyTorch reference on CUDA tensors",
            stacklevel=3,
        )
    return count > 0


def _native_cpu(sims: Tensor, sim_offsets: Tensor, n_rows: Tensor, n_cols: Tensor, threshold: float) -> Tensor:
    """C++ core; validates the block layout and NaN itself (ValueError). Threads: at most
    ``torch.get_num_threads()``, and only for batches large enough to pay for them."""
    if not _dispatch.HAS_C:
        return greedy_match_reference(sims, sim_offsets, n_rows, n_cols, threshold)
    out = torch.empty(n_rows.shape, dtype=torch.int64)
    _dispatch._C.greedy_match_cpu(sims.detach(), sim_offsets, n_rows, n_cols, out, threshold, torch.get_num_threads())
    return out


def _native_cuda(sims: Tensor, sim_offsets: Tensor, n_rows: Tensor, n_cols: Tensor, threshold: float) -> Tensor:
    """CUDA kernel, asynchronous on the current stream; expects validated input."""
    if not _cuda_kernel_usable():
        return greedy_match_reference(sims, sim_offsets, n_rows, n_cols, threshold)
    n = n_rows.shape[0]
    out = torch.empty(n, dtype=torch.int64, device=sims.device)
    # Row/column flags of blocks too large for shared memory (block i uses bytes from
    # sim_offsets[i] + i); freed stream-ordered by the caching allocator.
    scratch = torch.empty(sims.shape[0] + n, dtype=torch.uint8, device=sims.device)
    with torch.cuda.device(sims.device):
        stream = torch.cuda.current_stream(sims.device).cuda_stream
        _dispatch._C.greedy_match_cuda(sims.detach(), sim_offsets, n_rows, n_cols, out, scratch, threshold, stream)
    return out


_NATIVE = {"cpu": _native_cpu, "cuda": _native_cuda}


@torch.library.custom_op("opgrpo_fast::greedy_match", mutates_args=(), device_types="cpu")
def _greedy_match_op(sims: Tensor, sim_offsets: Tensor, n_rows: Tensor, n_cols: Tensor, threshold: float) -> Tensor:
    """Custom op: sims ``(S,)`` float32, sim_offsets ``(N + 1,)`` int64, n_rows/n_cols ``(N,)``
    int64, all contiguous on one device -> ``(N,)`` int64 matches."""
    return _native_cpu(sims, sim_offsets, n_rows, n_cols, threshold)


_greedy_match_op.register_kernel("cuda")(_native_cuda)


@_greedy_match_op.register_fake
def _(sims: Tensor, sim_offsets: Tensor, n_rows: Tensor, n_cols: Tensor, threshold: float) -> Tensor:
    return torch.empty_like(n_rows, dtype=torch.int64)


# ---- public entry point --------------------------------------------------------------------


def _prepare(sims, sim_offsets, n_rows, n_cols) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shape/dtype/device checks (no data reads); returns contiguous fp32 / int64 copies."""
    named = {"sims": sims, "sim_offsets": sim_offsets, "n_rows": n_rows, "n_cols": n_cols}
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"greedy_match: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"greedy_match: {name} must be 1-D, got shape {tuple(t.shape)}")
        if t.device != sims.device:
            raise ValueError(f"greedy_match: {name} is on {t.device} but sims is on {sims.device}")
    if not sims.is_floating_point():
        raise ValueError(f"greedy_match: sims must be a floating tensor, got {sims.dtype}")
    for name in ("sim_offsets", "n_rows", "n_cols"):
        t = named[name]
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"greedy_match: {name} must be an integer tensor, got {t.dtype}")
    n = n_rows.shape[0]
    if n_cols.shape[0] != n:
        raise ValueError(f"greedy_match: n_cols has {n_cols.shape[0]} entries but n_rows has {n}")
    if sim_offsets.shape[0] != n + 1:
        raise ValueError(
            f"greedy_match: sim_offsets must have N + 1 = {n + 1} entries (N = len(n_rows)), "
            f"got {sim_offsets.shape[0]}"
        )
    i64 = torch.int64
    return (sims.to(torch.float32).contiguous(), sim_offsets.to(i64).contiguous(),
            n_rows.to(i64).contiguous(), n_cols.to(i64).contiguous())


def _check_contents(sims: Tensor, offs: Tensor, rows: Tensor, cols: Tensor) -> None:
    """Block layout and NaN checks with one device sync (the CPU C++ kernel does its own)."""
    size = offs[1:] - offs[:-1]
    r1 = rows.clamp_min(1)
    consistent = torch.where(rows > 0, (size % r1 == 0) & (size // r1 == cols), size == 0)
    bad = torch.stack([
        offs[0] != 0,
        (rows < 0).any() | (cols < 0).any(),
        ~consistent.all(),
        offs[-1] != sims.shape[0],
        torch.isnan(sims).any(),
    ]).tolist()
    if bad[0]:
        raise ValueError(f"greedy_match: sim_offsets[0] must be 0, got {int(offs[0])}")
    if bad[1]:
        i = int(torch.nonzero((rows < 0) | (cols < 0))[0])
        raise ValueError(f"greedy_match: block {i} has a negative size {int(rows[i])} x {int(cols[i])}")
    if bad[2]:
        i = int(torch.nonzero(~consistent)[0])
        raise ValueError(
            f"greedy_match: sizes inconsistent with sim_offsets: block {i} is {int(rows[i])} x {int(cols[i])} "
            f"but sim_offsets[{i + 1}] - sim_offsets[{i}] = {int(size[i])}"
        )
    if bad[3]:
        raise ValueError(f"greedy_match: sim_offsets[-1] = {int(offs[-1])} but sims has {sims.shape[0]} entries")
    if bad[4]:
        raise ValueError("greedy_match: sims contains NaN; similarities must be finite or +-inf")


def greedy_match(
    sims: Tensor, sim_offsets: Tensor, n_rows: Tensor, n_cols: Tensor, threshold: float = 0.7
) -> Tensor:
    """Greedy match count of every block of a ragged batch of similarity matrices.

    Args:
        sims: ``(S,)`` float32/bf16/fp16/fp64 tensor, block ``i`` is the row-major
            ``(n_rows[i], n_cols[i])`` matrix ``sims[sim_offsets[i]:sim_offsets[i + 1]]``.
            Compared in float32; NaN raises ValueError.
        sim_offsets: ``(N + 1,)`` integer tensor (any integer dtype, used as int64),
            ``sim_offsets[0] == 0``, ``sim_offsets[-1] == S``.
        n_rows, n_cols: ``(N,)`` integer tensors; ``n_rows[i] * n_cols[i]`` must equal
            ``sim_offsets[i + 1] - sim_offsets[i]``. Zero sizes are allowed (0 matches).
        threshold: a match needs a similarity ``>= threshold`` (rounded to float32).

    Returns:
        ``(N,)`` int64 tensor on ``sims.device``: matches per block.

    Raises:
        ValueError: on any inconsistent input, naming the offending argument.

    Backend (``opgrpo_fast.ops.set_backend``): ``"reference"`` runs
    :func:`greedy_match_reference`; every other backend runs the native kernel (C++ on CPU,
    the CUDA kernel on CUDA) when ``opgrpo_fast._C`` imported and the device is supported,
    else the reference. Under ``torch.compile`` it goes through the custom op
    ``torch.ops.opgrpo_fast.greedy_match`` (opaque to the compiler, with a fake kernel);
    in eager mode the op's kernel is called directly. (There is no Triton kernel for this
    op: ``"triton"`` behaves like ``"auto"``.)
    """
    threshold = _check_threshold(threshold)
    sims, offs, rows, cols = _prepare(sims, sim_offsets, n_rows, n_cols)
    dev = sims.device.type
    native = _dispatch.get_backend() != "reference" and _dispatch.HAS_C and (
        dev == "cpu" or (dev == "cuda" and _cuda_kernel_usable())
    )
    if not (native and dev == "cpu"):  # the C++ CPU kernel validates contents itself, in its one pass
        _check_contents(sims, offs, rows, cols)
    if not native:
        return greedy_match_reference(sims, offs, rows, cols, threshold)
    if torch.compiler.is_compiling():
        return torch.ops.opgrpo_fast.greedy_match(sims, offs, rows, cols, threshold)
    # Eager: the op's kernel called directly, skipping ~25 us of dispatcher overhead.
    return _NATIVE[dev](sims, offs, rows, cols, threshold)
