"""Greedy matching on a realistic rollout batch (not part of the test suite).

Batch: 64 prompts x 10 completions = 640 blocks; per completion R ~ U{3..8} reference
perspectives x C ~ U{2..12} candidate segments; similarities mostly in [0.1, 0.6) with ~10%
of entries in [0.7, 0.95) (MiniLM cosine similarities of paraphrases vs unrelated text).

Group "greedy_match": the baseline is a numpy loop written like the published OP-GRPO code
(argmax / unravel_index / -inf masking per match); then the PyTorch reference, the public
``greedy_match`` (C++ custom op incl. validation and dispatch) and the bare ``_C`` call.

Run: ``python -m pytest bench/bench_greedy_match.py --benchmark-only -q -p no:cacheprovider``
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from opgrpo_fast.ops import _dispatch
from opgrpo_fast.ops.greedy import greedy_match, greedy_match_reference

N_PROMPTS, N_PER_PROMPT, THRESHOLD = 64, 10, 0.7
GROUP = "greedy_match"


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


def _run(benchmark, packed, fn, *args, role=None):
    """Record the batch in extra_info, warm fn up once (first-call costs stay out of the
    calibration), then benchmark it."""
    sims, offsets, *_ = packed
    benchmark.extra_info.update(blocks=len(offsets) - 1, entries=sims.numel(), threshold=THRESHOLD,
                                threads=torch.get_num_threads())
    if role:
        benchmark.extra_info["role"] = role
    fn(*args)
    return benchmark(fn, *args)


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
