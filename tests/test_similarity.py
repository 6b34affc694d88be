"""pairwise_cosine: Triton kernel (interpreted on CPU, native on CUDA) vs vectorised PyTorch vs
per-completion reference, on awkward ragged shapes, three dtypes, the sequential redundancy rule, and
validation. Tests taking a ``device`` argument also run on CUDA tensors (marked ``cuda``: skipped
without a GPU, run by bench/gpu_check.sh); there the float64 truth is still computed on CPU.

Accuracy follows flash-attention's rule: an implementation's error against a float64 reference may
be at most 2x the error of the same-dtype PyTorch reference, plus a small absolute floor.
n_redundant must match exactly: inputs are built so that no candidate cosine lies near the threshold.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opgrpo_fast import ops
from opgrpo_fast.kernels.similarity import MAX_SEGMENTS, pairwise_cosine_reference, pairwise_cosine_triton
from opgrpo_fast.ops import similarity as sim_ops
from opgrpo_fast.ops._dispatch import HAS_TRITON, triton_runnable

THR = 0.78
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_ONLY)]

# (candidate counts, reference counts) per completion: N = 0, 1, 7, 33, with 0/1/7/33-sized segments.
SHAPES = {
    "N0": ([], []),
    "N1": ([33], [7]),
    "N7": ([0, 1, 7, 33, 2, 3, 5], [3, 0, 1, 7, 33, 2, 4]),
    "N33": ([0, 1, 7, 33] + [2, 1, 3, 0, 2, 1, 2, 3] * 3 + [1, 2, 0, 1, 2],  # small: the interpreter's
            [3, 0, 33, 7] + [1, 2, 0, 3, 2, 4, 1, 2] * 3 + [2, 1, 3, 0, 1]),  # cost grows with sum(C_i)
    # CUDA only (far too slow interpreted): segment counts up to MAX_SEGMENTS, the kernel's largest tiles.
    "MAX": ([MAX_SEGMENTS, 1, 65, 0, MAX_SEGMENTS - 1, 33], [MAX_SEGMENTS, 64, 1, 3, 0, 17]),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def offsets(counts) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(counts, dtype=torch.long).cumsum(0).tolist()], dtype=torch.long)


def make_batch(c_counts, r_counts, d, dtype, seed=0):
    """Candidates drawn around a few orthonormal directions per completion (same cluster: cos > 0.9,
    different: |cos| < 0.5), with random norms; references are Gaussian. Cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    k = min(d, 5)
    cands = []
    for c in c_counts:
        centers = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:, :k].T
        ids = torch.randint(0, k, (c,), generator=g)
        noise = 0.15 * torch.randn(c, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        scale = 0.5 + 2.5 * torch.rand(c, 1, generator=g, dtype=torch.float64)
        cands.append((centers[ids] + noise) * scale)
    cand = torch.cat(cands) if cands else torch.zeros(0, d, dtype=torch.float64)
    ref = torch.randn(sum(r_counts), d, generator=g, dtype=torch.float64)
    return cand.to(dtype), offsets(c_counts), ref.to(dtype), offsets(r_counts)


def assert_far_from_threshold(cand, co, thr=THR, margin=1e-3):
    for i in range(co.numel() - 1):
        c = torch.nn.functional.normalize(cand[co[i]:co[i + 1]].double(), dim=-1)
        cos = (c @ c.T).triu(1)
        assert ((cos - thr).abs() > margin).all(), "test data has a cosine near the threshold"


def assert_flash_rule(out, truth, same_dtype, atol=1e-5):
    assert out.shape == truth.shape
    if out.numel() == 0:
        return
    err, ref_err = (out - truth).abs().max().item(), (same_dtype - truth).abs().max().item()
    assert err <= 2 * ref_err + atol, f"error {err:.3g} > 2 x same-dtype PyTorch error {ref_err:.3g} + {atol}"


def triton_ok(device="cpu") -> bool:
    """Whether the Triton kernel runs on ``device`` tensors here (CUDA, or CPU under TRITON_INTERPRET=1)."""
    return HAS_TRITON and triton_runnable(torch.empty(0, device=device))


def _auto_op(*args):
    with ops.use_backend("auto"):
        return ops.pairwise_cosine(*args)


def implementations(device="cpu"):
    impls = {"vectorised": sim_ops.pairwise_cosine_vectorised, "reference": pairwise_cosine_reference}
    if triton_ok(device):
        impls["triton"] = pairwise_cosine_triton
    if device == "cuda":  # the public op's dispatch on CUDA tensors (Triton when it imports)
        impls["auto"] = _auto_op
    return impls


def skip_unless_runnable(backend, device):
    if backend == "triton" and not triton_ok(device):
        pytest.skip(f"Triton cannot run on {device} tensors here")


@pytest.mark.parametrize("d", [8, 384, 33])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, device", [(s, "cpu") for s in SHAPES if s != "MAX"]
                         + [pytest.param(s, "cuda", marks=CUDA_ONLY) for s in SHAPES])
def test_matches_reference(shape, device, dtype, d):
    c_counts, r_counts = SHAPES[shape]
    cand, co, ref, ro = make_batch(c_counts, r_counts, d, dtype, seed=d)
    assert_far_from_threshold(cand, co)
    truth_sims, truth_off, truth_red = pairwise_cosine_reference(cand.double(), co, ref.double(), ro, THR)
    same_dtype_sims = pairwise_cosine_reference(cand, co, ref, ro, THR, upcast=False)[0]
    assert truth_sims.numel() == sum(a * b for a, b in zip(c_counts, r_counts))
    args = [t.to(device) for t in (cand, co, ref, ro)]
    for name, fn in implementations(device).items():
        sims, sim_off, n_red = (t.cpu() for t in fn(*args, THR))
        assert sims.dtype == torch.float32 and sim_off.dtype == n_red.dtype == torch.int64, name
        assert torch.equal(sim_off, truth_off), name
        assert torch.equal(n_red, truth_red), name
        assert_flash_rule(sims, truth_sims, same_dtype_sims)


def hand_batch():
    """Completion 0: a, b, c at 0/30/60 degrees: cos(a,b) = cos(b,c) = 0.866 >= 0.78 > cos(a,c) = 0.5.
    The sequential rule keeps a, marks b, skips b (already redundant), keeps c: 1 redundant, not 2.
    Completion 1: x, x, 3x, y, x with y orthogonal: x marks the other three x's: 3 redundant.
    Completion 2: a single candidate: 0. Completion 3: a zero vector (cosine 0 with everything) and
    two orthogonal vectors: 0."""
    def unit(deg, d=16):
        v = torch.zeros(d)
        v[0], v[1] = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return v
    x, y = unit(10) * 2.0, unit(100) * 0.5
    rows = [unit(0), unit(30), unit(60), x, x, 3 * x, y, x, unit(45), torch.zeros(16), unit(0), unit(90)]
    cand = torch.stack(rows)
    ref = torch.stack([unit(0), unit(90), 0.5 * unit(30), unit(180)])
    return cand, offsets([3, 5, 1, 3]), ref, offsets([2, 0, 1, 1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["reference", "native", "triton", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_hand_made_sequential_rule(backend, dtype, device):
    skip_unless_runnable(backend, device)
    cand, co, ref, ro = (t.to(device) for t in hand_batch())
    with ops.use_backend(backend):
        sims, sim_off, n_red = ops.pairwise_cosine(cand.to(dtype), co, ref.to(dtype), ro)
    assert sims.device == cand.device
    sims = sims.cpu()
    assert n_red.tolist() == [1, 3, 0, 0]
    assert sim_off.tolist() == [0, 6, 6, 7, 10]
    c30 = math.cos(math.radians(30))
    expected0 = [1.0, c30, 0.5, 0.0, 0.5, c30]  # refs (0 deg, 90 deg) x cands (0, 30, 60 deg)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    expected = expected0 + [math.cos(math.radians(15)), 0.0, -1.0, 0.0]  # + 0.5 x 30 deg vs 45; 180 vs 0-vec/0/90
    torch.testing.assert_close(sims, torch.tensor(expected), atol=tol, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["reference", "native", "triton"])
def test_batch_without_any_pair(backend, device):
    skip_unless_runnable(backend, device)
    cand, co, ref, ro = (t.to(device) for t in make_batch([0, 4, 0], [2, 0, 0], 8, torch.float32))
    with ops.use_backend(backend):
        sims, sim_off, n_red = ops.pairwise_cosine(cand, co, ref, ro)
    assert sims.numel() == 0 and sim_off.tolist() == [0, 0, 0, 0] and n_red.shape == (3,)


@pytest.mark.parametrize("device", DEVICES)
def test_large_segments_fall_back_to_vectorised(monkeypatch, device):
    """More than MAX_SEGMENTS candidates: the Triton backend takes the vectorised path."""
    skip_unless_runnable("triton", device)
    monkeypatch.setattr(sim_ops, "pairwise_cosine_triton", lambda *a, **k: pytest.fail("kernel called"))
    cand, co, ref, ro = make_batch([MAX_SEGMENTS + 2, 3], [2, 1], 8, torch.float32)
    with ops.use_backend("triton"):
        got = [t.cpu() for t in ops.pairwise_cosine(*(t.to(device) for t in (cand, co, ref, ro)))]
    want = pairwise_cosine_reference(cand, co, ref, ro)
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
def test_auto_runs_the_triton_kernel_on_cuda(monkeypatch, device):
    """On CUDA tensors the default backend must launch the kernel, not quietly take the vectorised path."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    calls = []
    monkeypatch.setattr(sim_ops, "pairwise_cosine_triton",
                        lambda *a, **k: calls.append(1) or pairwise_cosine_triton(*a, **k))
    cand, co, ref, ro = make_batch([3, 5], [2, 4], 16, torch.float32)
    got = _auto_op(*(t.to(device) for t in (cand, co, ref, ro)))
    assert calls == [1]
    assert torch.equal(got[2].cpu(), pairwise_cosine_reference(cand, co, ref, ro)[2])


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 6)), max_size=8),
       d=st.sampled_from([3, 8, 33]), seed=st.integers(0, 2**16))
def test_vectorised_matches_reference_property(counts, d, seed):
    c_counts, r_counts = [c for c, _ in counts], [r for _, r in counts]
    cand, co, ref, ro = make_batch(c_counts, r_counts, d, torch.float32, seed)
    assert_far_from_threshold(cand, co)
    got = sim_ops.pairwise_cosine_vectorised(cand, co, ref, ro, THR)
    want = pairwise_cosine_reference(cand, co, ref, ro, THR)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)


def _bad(device="cpu", **change):
    """Valid arguments with ``change`` applied (on CPU), then all moved to ``device``."""
    cand, co, ref, ro = make_batch([2, 1], [1, 2], 8, torch.float32)
    args = dict(cand=cand, cand_offsets=co, ref=ref, ref_offsets=ro)
    args.update({k: (v(args) if callable(v) else v) for k, v in change.items()})
    return {k: v.to(device) for k, v in args.items()}


def _with_nan(t):
    t = t.clone()
    t[0, 0] = float("nan")
    return t


@pytest.mark.parametrize("change, message", [
    (dict(cand=lambda a: a["cand"][0]), "cand must be 2-D"),
    (dict(ref=lambda a: a["ref"][:, :4]), "same D"),
    (dict(cand=lambda a: a["cand"].long()), "cand must be a floating tensor"),
    (dict(cand_offsets=lambda a: a["cand_offsets"].float()), "cand_offsets must be an integer tensor"),
    (dict(ref_offsets=lambda a: a["ref_offsets"][None]), "ref_offsets must be 1-D"),
    (dict(ref_offsets=torch.tensor([0, 3])), "same N"),
    (dict(cand_offsets=torch.tensor([1, 2, 3])), "must start at 0"),
    (dict(cand_offsets=torch.tensor([0, 3, 2, 3]), ref_offsets=torch.tensor([0, 1, 2, 3])), "non-decreasing"),
    (dict(ref_offsets=torch.tensor([0, 1, 2])), r"ref_offsets\[-1\] = 2 must equal the number of ref rows \(3\)"),
    (dict(cand=lambda a: _with_nan(a["cand"])), "cand contains NaN/inf"),
    (dict(ref=lambda a: a["ref"] / 0), "ref contains NaN/inf"),
])
@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise(change, message, device):
    with pytest.raises(ValueError, match=message):
        ops.pairwise_cosine(**_bad(device, **change))
