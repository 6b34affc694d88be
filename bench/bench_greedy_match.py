"""Greedy matching on a realistic rollout batch (not part of the test suite).

Batch: 64 prompts x 10 completions = 640 blocks; per completion R ~ U{3..8} reference
perspectives x C ~ U{2..12} candidate segments; similarities mostly in [0.1, 0.6) with ~10%
of entries in [0.7, 0.95) (MiniLM cosine similarities of paraphrases vs unrelated text).

Group "greedy_match": the baseline is a numpy loop written like the published OP-GRPO code
(argmax / unravel_index / -inf masking per match); then the PyTorch reference, the public
``greedy_match`` (C++ custom op incl. validation and dispatch), the bare ``_C`` call, and on a CUDA
machine the public op on CUDA tensors (the CUDA kernel when compiled in, one warp per block).
Group "greedy_match_cuda_large" (CUDA only): the CUDA op on the batch tiled ``LARGE_TILE`` times.

Every member records ``extra_info["bytes"]``: the bytes the op must read (sims, offsets, sizes) and
write (counts) for its input; ``bench/gpu_report.py`` turns it into GB/s (greedy matching is
latency-bound - a serial argmax chain per block - so this is far from the card's bandwidth).

Run: ``python -m pytest bench/bench_greedy_match.py --benchmark-only -q -p no:cacheprovider``
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from opgrpo_fast.ops import _dispatch
from opgrpo_fast.ops.greedy import greedy_match, greedy_match_reference
from _benchutil import CUDA, cuda_synced, timed

N_PROMPTS, N_PER_PROMPT, THRESHOLD = 64, 10, 0.7
GROUP = "greedy_match"
LARGE_TILE = 16


def make_batch(seed: int = 0):
    """(list of (R, C) float32 numpy matrices, packed (sims, sim_offsets, n_rows, n_cols))."""
    rng = np.random.default_rng(seed)
    n = N_PROMPTS * N_PER_PROMPT
    mats = []
    for r, c in zip(rng.integers(3, 9, n), rng.integers(2, 13, n)):
        m = rng.uniform(0.1, 0.6, (r, c))
        high = rng.random((r, c)) < 0.1
        m[high] = rng.uniform(0.7, 0.95, int(high.sum()))
        mats.append(m.astype(np.float32))
    sims = torch.from_numpy(np.concatenate([m.ravel() for m in mats]))
    sizes = torch.tensor([m.size for m in mats], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    rows = torch.tensor([m.shape[0] for m in mats], dtype=torch.int64)
    cols = torch.tensor([m.shape[1] for m in mats], dtype=torch.int64)
    return mats, (sims, offsets, rows, cols)


def numpy_greedy_loop(mats, threshold=THRESHOLD):
    """The published per-completion loop (numpy), kept as written: the baseline."""
    counts = []
    for mat in mats:
        S = np.array(mat, dtype=np.float32)
        count = 0
        while True:
            idx = np.argmax(S)
            r, c = np.unravel_index(idx, S.shape)
            if S[r, c] < threshold:
                break
            count += 1
            S[r, :] = -np.inf
            S[:, c] = -np.inf
        counts.append(count)
    return counts


@pytest.fixture(scope="module")
def batch():
    mats, packed = make_batch()
    return mats, packed, numpy_greedy_loop(mats)


def op_bytes(sims, offsets, rows, cols) -> int:
    """Compulsory traffic of one call: read sims (float32) and the int64 offsets / sizes, write the
    int64 counts."""
    n = rows.numel()
    return sims.numel() * 4 + (n + 1) * 8 + 2 * n * 8 + n * 8


def tiled(packed, tile: int, device: str):
    """The packed batch repeated ``tile`` times (offsets shifted), on ``device``."""
    sims, offsets, rows, cols = packed
    sizes = (offsets[1:] - offsets[:-1]).repeat(tile)
    offs = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    return tuple(t.to(device) for t in (sims.repeat(tile), offs, rows.repeat(tile), cols.repeat(tile)))


def _run(benchmark, packed, fn, *args, role=None):
    """Record the batch in extra_info, warm fn up once (first-call costs stay out of the
    calibration), then benchmark it."""
    sims, offsets, *_ = packed
    info = {"role": role} if role else {}
    return timed(benchmark, fn, args, sims.device.type, blocks=len(offsets) - 1, entries=sims.numel(),
                 threshold=THRESHOLD, threads=torch.get_num_threads(), bytes=op_bytes(*packed), **info)


@pytest.mark.benchmark(group=GROUP)
def test_numpy_loop_baseline(benchmark, batch):
    mats, packed, expected = batch
    assert _run(benchmark, packed, numpy_greedy_loop, mats, role="baseline") == expected


@pytest.mark.benchmark(group=GROUP)
def test_torch_reference(benchmark, batch):
    mats, packed, expected = batch
    assert _run(benchmark, packed, greedy_match_reference, *packed, THRESHOLD).tolist() == expected


@pytest.mark.benchmark(group=GROUP)
def test_cpp_greedy_match(benchmark, batch):
    """Public entry point: validation + dispatch + C++ core."""
    if not _dispatch.HAS_C:
        pytest.skip("opgrpo_fast._C not built")
    mats, packed, expected = batch
    assert _run(benchmark, packed, greedy_match, *packed, THRESHOLD).tolist() == expected


@pytest.mark.benchmark(group=GROUP)
def test_cpp_core_direct(benchmark, batch):
    """Bare nanobind call (output preallocated): the C++ cost without the torch op layer."""
    if not _dispatch.HAS_C:
        pytest.skip("opgrpo_fast._C not built")
    mats, packed, expected = batch
    out = torch.empty(len(mats), dtype=torch.int64)
    _run(benchmark, packed, _dispatch._C.greedy_match_cpu, *packed, out, THRESHOLD, 0)
    assert out.tolist() == expected


def _cuda_role() -> str:
    from opgrpo_fast.ops.greedy import _cuda_kernel_usable

    return "cuda kernel" if _cuda_kernel_usable() else "reference on cuda (CUDA kernel not built/usable)"


@pytest.mark.benchmark(group=GROUP)
def test_cuda_greedy_match(benchmark, batch):
    """Public entry point on CUDA tensors: validation (one sync) + the CUDA kernel."""
    if not CUDA:
        pytest.skip("needs CUDA")
    mats, packed, expected = batch
    dev = tiled(packed, 1, "cuda")
    out = _run(benchmark, dev, cuda_synced(greedy_match), *dev, THRESHOLD, role=_cuda_role())
    assert out.tolist() == expected


@pytest.mark.benchmark(group=GROUP + "_cuda_large")
def test_cuda_greedy_match_large(benchmark, batch):
    """The batch tiled LARGE_TILE times on CUDA (10240 blocks)."""
    if not CUDA:
        pytest.skip("needs CUDA")
    if _cuda_role() != "cuda kernel":
        pytest.skip("CUDA kernel not built/usable: the reference fallback is only timed at the normal size")
    mats, packed, expected = batch
    dev = tiled(packed, LARGE_TILE, "cuda")
    out = _run(benchmark, dev, cuda_synced(greedy_match), *dev, THRESHOLD, role=_cuda_role())
    assert out.tolist() == expected * LARGE_TILE
