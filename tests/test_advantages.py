"""group_advantages / fused_reward_advantages: Triton kernel (interpreted on CPU, native on CUDA) vs
vectorised PyTorch vs per-group reference, three dtypes, degenerate groups, hand-computed scale modes,
and validation. Accuracy: flash-attention's rule (error vs a float64 reference <= 2x the same-dtype
PyTorch reference's error + a small floor). Tests taking a ``device`` argument also run on CUDA
tensors (marked ``cuda``: skipped without a GPU, run by bench/gpu_check.sh)."""
import math

import pytest
import torch

from opgrpo_fast import ops
from opgrpo_fast.kernels.advantages import MAX_GROUP, SCALES, fused_advantages_reference, fused_advantages_triton
from opgrpo_fast.ops import advantages as adv_ops
from opgrpo_fast.ops._dispatch import HAS_TRITON, triton_runnable

TRITON_OK = HAS_TRITON and triton_runnable(torch.zeros(1))  # on CPU tensors, i.e. interpreted
BACKENDS = ["reference", "native", "triton", "auto"]
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_ONLY)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (N, G): N in {0, 1, 7, 33, 1025} for G = 1 and the matching multiples of 10 for G = 10.
SHAPES = [(0, 1), (1, 1), (7, 1), (33, 1), (1025, 1), (0, 10), (10, 10), (70, 10), (330, 10), (1030, 10)]
TRITON_MAX_PROGRAMS = 40  # the interpreter runs programs one by one: N ~ 1025 is vectorised vs reference only


def make_components(n, k, dtype, seed=0):
    """Gaussian components with a few exactly constant groups (rows 0..9 and 20..29 when present)."""
    g = torch.Generator().manual_seed(seed)
    comp = torch.randn(n, k, generator=g, dtype=torch.float64) + 0.5
    comp[:10] = 0.25
    comp[20:30] = comp[20:21]
    return comp.to(dtype), torch.randn(k, generator=g, dtype=torch.float64).abs().float()


def assert_flash_rule(out, truth, same_dtype, atol=2e-5):
    assert out.shape == truth.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    if out.numel():
        err, ref_err = (out - truth).abs().max().item(), (same_dtype - truth).abs().max().item()
        assert err <= 2 * ref_err + atol, f"error {err:.3g} > 2 x same-dtype error {ref_err:.3g} + {atol}"


def triton_ok(device="cpu") -> bool:
    """Whether the Triton kernel runs on ``device`` tensors here (CUDA, or CPU under TRITON_INTERPRET=1)."""
    return HAS_TRITON and triton_runnable(torch.empty(0, device=device))


def skip_unless_runnable(backend, device):
    if backend == "triton" and not triton_ok(device):
        pytest.skip(f"Triton cannot run on {device} tensors here")


def _auto_op(*args):
    with ops.use_backend("auto"):
        return ops.fused_reward_advantages(*args)


def implementations(n_programs, device="cpu"):
    if device == "cuda":  # native kernels: no program limit; the per-group reference loop is left to the CPU
        impls = {"vectorised": adv_ops.fused_advantages_vectorised, "auto": _auto_op}
        if triton_ok(device):
            impls["triton"] = fused_advantages_triton
        return impls
    impls = {"vectorised": adv_ops.fused_advantages_vectorised, "reference": fused_advantages_reference}
    if TRITON_OK and n_programs <= TRITON_MAX_PROGRAMS:
        impls["triton"] = fused_advantages_triton
    return impls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, g", SHAPES)
def test_matches_reference(n, g, dtype, k, device):
    comp, w = make_components(n, k, dtype, seed=n + k)
    dev_comp, dev_w = comp.to(device), w.to(device)
    for scale, clamp in [("group", 0.0), ("batch", None), ("none", 0.0)]:  # every scale, both clamp modes
        truth = fused_advantages_reference(comp.double(), w.double(), g, scale, 1e-6, clamp)
        same = fused_advantages_reference(comp, w, g, scale, 1e-6, clamp, upcast=False)
        for name, fn in implementations(n // g, device).items():
            total, adv = (t.cpu() for t in fn(dev_comp, dev_w, g, scale, 1e-6, clamp))
            assert_flash_rule(total, truth[0], same[0])
            assert_flash_rule(adv, truth[1], same[1])
            if n >= 30 and g == 10:  # constant groups: exact zeros on every path
                assert not adv[:10].any() and not adv[20:30].any(), (name, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", SCALES)
def test_degenerate_groups_are_exact_zeros(backend, scale, device):
    skip_unless_runnable(backend, device)
    dev = dict(device=device)
    const = torch.tensor([0.1] * 10 + [3.7] * 10 + [-1e-3] * 10, **dev)
    with ops.use_backend(backend):
        assert torch.equal(ops.group_advantages(const, 10, scale), torch.zeros(30, **dev))
        assert torch.equal(ops.group_advantages(torch.randn(9, **dev), 1, scale), torch.zeros(9, **dev))
        assert torch.equal(ops.group_advantages(torch.tensor([2.5], **dev), 1, scale), torch.zeros(1, **dev))
        total, adv = ops.fused_reward_advantages(-torch.rand(20, 3, **dev), [1.0, 2.0, 0.5], 10, scale)  # clamped
        assert torch.equal(total, torch.zeros(20, **dev)) and torch.equal(adv, torch.zeros(20, **dev))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_modes_hand_computed(backend, device):
    skip_unless_runnable(backend, device)
    dev = dict(device=device)
    r = torch.tensor([1.0, 2.0, 3.0, 4.0], **dev)  # groups of 2: means 1.5, 3.5; diffs -+0.5
    eps = 1e-6
    std_g = math.sqrt(0.5)  # unbiased: ((0.5^2 + 0.5^2) / 1) ** 0.5
    std_all = math.sqrt(sum((x - 2.5) ** 2 for x in (1, 2, 3, 4)) / 3)
    pattern = torch.tensor([-0.5, 0.5, -0.5, 0.5], dtype=torch.float64, **dev)
    expected = {"group": pattern / (std_g + eps), "batch": pattern / (std_all + eps), "none": pattern}
    with ops.use_backend(backend):
        for scale, want in expected.items():
            torch.testing.assert_close(ops.group_advantages(r, 2, scale).double(), want, rtol=1e-6, atol=1e-7)
        # components @ [2, -1] = [2, -1, 1, 7] -> clamp 0 -> [2, 0, 1, 7]: diffs [1, -1, -3, 3]
        comp = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [4.0, 1.0]], **dev)
        total, adv = ops.fused_reward_advantages(comp, [2.0, -1.0], 2, "group")
        assert total.tolist() == [2.0, 0.0, 1.0, 7.0]
        want = torch.tensor([1 / (2**0.5 + eps), -1 / (2**0.5 + eps), -3 / (18**0.5 + eps), 3 / (18**0.5 + eps)], **dev)
        torch.testing.assert_close(adv, want, rtol=1e-6, atol=1e-7)
        total, adv = ops.fused_reward_advantages(comp, torch.tensor([2.0, -1.0], **dev), 4, "none", clamp_min=None)
        assert total.tolist() == [2.0, -1.0, 1.0, 7.0] and adv.tolist() == [-0.25, -3.25, -1.25, 4.75]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_output_dtypes_and_empty(backend, dtype, device):
    skip_unless_runnable(backend, device)
    dev = dict(device=device)
    with ops.use_backend(backend):
        adv = ops.group_advantages(torch.arange(20, **dev).to(dtype), 10)
        assert adv.dtype == dtype and adv.shape == (20,) and adv.device.type == device
        assert ops.group_advantages(torch.arange(20, **dev), 10).dtype == torch.float32  # integer rewards
        total, adv = ops.fused_reward_advantages(torch.ones(20, 3, dtype=dtype, **dev), [1, 1, 1], 10)
        assert total.dtype == adv.dtype == torch.float32 and total.device.type == adv.device.type == device
        assert ops.group_advantages(torch.zeros(0, dtype=dtype, **dev), 10).shape == (0,)
        total, adv = ops.fused_reward_advantages(torch.zeros(0, 4, dtype=dtype, **dev), torch.ones(4), 5, "batch")
        assert total.shape == adv.shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
def test_large_groups_fall_back_to_vectorised(monkeypatch, device):
    skip_unless_runnable("triton", device)
    monkeypatch.setattr(adv_ops, "fused_advantages_triton", lambda *a, **k: pytest.fail("kernel called"))
    r = torch.randn(2 * (MAX_GROUP + 1))
    with ops.use_backend("triton"):
        got = ops.group_advantages(r.to(device), MAX_GROUP + 1).cpu()
    torch.testing.assert_close(got, fused_advantages_reference(r[:, None], [1.0], MAX_GROUP + 1, clamp_min=None)[1])


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA_ONLY)])
def test_auto_runs_the_triton_kernel_on_cuda(monkeypatch, device):
    """On CUDA tensors the default backend must launch the kernel, not quietly take the vectorised path."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    calls = []
    monkeypatch.setattr(adv_ops, "fused_advantages_triton",
                        lambda *a, **k: calls.append(1) or fused_advantages_triton(*a, **k))
    comp, w = make_components(70, 4, torch.float32)
    total, adv = _auto_op(comp.to(device), w.to(device), 10)
    assert calls == [1] and adv.device.type == device
    torch.testing.assert_close(adv.cpu(), fused_advantages_reference(comp, w, 10)[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_components(device):
    comp = torch.randn(4, 20).T  # (20, 4), strides (1, 20)
    want = fused_advantages_reference(comp.contiguous(), torch.ones(4), 10)
    for backend in BACKENDS:
        if backend == "triton" and not triton_ok(device):
            continue
        with ops.use_backend(backend):
            got = ops.fused_reward_advantages(comp.to(device), torch.ones(4), 10)
        torch.testing.assert_close(tuple(t.cpu() for t in got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: ops.group_advantages(torch.zeros(7), 2), r"N=7 is not divisible by group_size G=2"),
    (lambda: ops.group_advantages(torch.zeros(4), 0), r"group_size must be >= 1, got 0"),
    (lambda: ops.group_advantages(torch.zeros(4), -2), r"group_size must be >= 1, got -2"),
    (lambda: ops.group_advantages(torch.zeros(4), 2.0), r"group_size must be an integer"),
    (lambda: ops.group_advantages(torch.zeros(4), 2, "std"),
     r"unknown scale 'std'; expected one of \('group', 'batch', 'none'\)"),
    (lambda: ops.group_advantages(torch.tensor([0.0, float("nan")]), 2), r"rewards contains NaN/inf"),
    (lambda: ops.group_advantages(torch.zeros(4, 1), 2), r"rewards must be 1-D"),
    (lambda: ops.fused_reward_advantages(torch.zeros(4), [1.0], 2), r"components must be 2-D"),
    (lambda: ops.fused_reward_advantages(torch.zeros(4, 3), [1.0, 2.0], 2),
     r"weights has 2 entries but components has K=3"),
    (lambda: ops.fused_reward_advantages(torch.full((4, 1), float("inf")), [1.0], 2), r"components contains NaN/inf"),
    (lambda: ops.fused_reward_advantages(torch.zeros(4, 1), [float("nan")], 2), r"weights contains NaN/inf"),
    (lambda: ops.fused_reward_advantages(torch.zeros(6, 1), [1.0], 4), r"N=6 is not divisible by group_size G=4"),
])
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
