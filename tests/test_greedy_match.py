"""Greedy matching: the C++ op (and CUDA kernel, on a GPU machine) against the PyTorch and
plain-Python references, the semantics (ties, greedy != optimal), threading, validation,
torch.compile / opcheck composability and the build (static cudart, imports without a GPU).
Tests taking a ``device`` argument also run the op on CUDA tensors (marked ``cuda``: skipped without
a GPU, run by bench/gpu_check.sh); the references always run on CPU."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opgrpo_fast.ops import _dispatch, use_backend
from opgrpo_fast.ops.greedy import greedy_match, greedy_match_python, greedy_match_reference

_C = _dispatch._C
needs_c = pytest.mark.skipif(not _dispatch.HAS_C, reason="opgrpo_fast._C not built")
TIE_VALUES = [0.0, 0.5, 0.7, 0.8, 0.9, 1.0]
AWKWARD = [(0, 3), (4, 0), (0, 0), (1, 1), (7, 33), (33, 7), (3, 5), (8, 12), (2, 2), (1, 9), (9, 1)]
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_ONLY)]


def pack(blocks: list[torch.Tensor]):
    """2-D blocks -> (sims, sim_offsets, n_rows, n_cols) of the ragged layout."""
    sizes = [b.numel() for b in blocks]
    offsets = torch.zeros(len(blocks) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(sizes, dtype=torch.int64), 0)
    sims = torch.cat([b.reshape(-1) for b in blocks]) if blocks else torch.zeros(0)
    rows = torch.tensor([b.shape[0] for b in blocks], dtype=torch.int64)
    cols = torch.tensor([b.shape[1] for b in blocks], dtype=torch.int64)
    return sims, offsets, rows, cols


def random_blocks(n: int, seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    """n blocks cycling through awkward shapes; half tie-prone values, half continuous."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for i in range(n):
        r, c = AWKWARD[i % len(AWKWARD)] if i < 2 * len(AWKWARD) else torch.randint(0, 10, (2,), generator=g).tolist()
        if i % 2:
            vals = torch.tensor(TIE_VALUES)[torch.randint(len(TIE_VALUES), (r, c), generator=g)]
        else:
            vals = torch.rand(r, c, generator=g) * 1.2 - 0.1
        blocks.append(vals.to(dtype))
    return blocks


def on(device, *tensors):
    """``tensors`` moved to ``device`` (those on the meta device stay there)."""
    return tuple(t if t.device.type == "meta" else t.to(device) for t in tensors)


def all_three(blocks, threshold, device="cpu"):
    """(native op on ``device`` tensors, torch reference, python reference) counts as lists."""
    sims, offs, rows, cols = pack(blocks)
    native = greedy_match(*on(device, sims, offs, rows, cols), threshold)
    assert native.dtype == torch.int64 and native.shape == (len(blocks),) and native.device.type == device
    ref = greedy_match_reference(sims, offs, rows, cols, threshold)
    py = greedy_match_python([b.float().tolist() for b in blocks], threshold)
    return native.tolist(), ref.tolist(), py


# ---- equality across implementations ---------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [0, 1, 7, 33, 1025])
def test_awkward_shapes_all_implementations_agree(n, dtype, device):
    blocks = random_blocks(n, seed=n, dtype=dtype)
    for threshold in (0.7, 0.8, 0.5) if n < 1025 else (0.7,):
        native, ref, py = all_three(blocks, threshold, device)
        assert native == ref == py


@pytest.mark.parametrize("device", DEVICES)
def test_entry_exactly_at_threshold_and_upcast_rule(device):
    block = torch.tensor([[0.7]])
    for thr, want in ((0.7, 1), (0.8, 0), (0.69, 1)):
        assert all_three([block], thr, device) == ([want],) * 3
    # bf16(0.7) = 0.69921875 < float32(0.7): compared in float32, never as bf16 vs bf16(0.7).
    assert all_three([block.to(torch.bfloat16)], 0.7, device) == ([0],) * 3
    assert all_three([block.to(torch.float16)], 0.7, device) == ([1],) * 3  # fp16(0.7) = 0.7002
    assert all_three([block.to(torch.bfloat16)], 0.69921875, device) == ([1],) * 3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(200, 150), (1, 5000), (5000, 1), (40, 300), (300, 2), (1023, 1), (1000, 25),
                                   (25, 1000)])
def test_large_blocks_heap_paths(shape, device):
    """Blocks beyond the C++ stack buffers (entries > 128, rows + cols > 256) and, on CUDA, around the
    kernel's shared-memory flag limit (rows + cols <= 1024 in shared memory, beyond in global scratch)."""
    g = torch.Generator().manual_seed(sum(shape))
    blocks = [torch.rand(shape, generator=g), torch.tensor(TIE_VALUES)[torch.randint(6, shape, generator=g)]]
    sims, offs, rows, cols = pack(blocks)
    got = greedy_match(*on(device, sims, offs, rows, cols), 0.7).tolist()
    assert got == greedy_match_reference(sims, offs, rows, cols).tolist()


mat_strategy = st.integers(0, 6).flatmap(
    lambda r: st.integers(0, 6).flatmap(
        lambda c: st.lists(
            st.lists(st.sampled_from(TIE_VALUES + [float("inf"), float("-inf")]), min_size=c, max_size=c),
            min_size=r, max_size=r,
        ).map(lambda m, c=c: (m, c))
    )
)


@settings(max_examples=300, deadline=None)
@given(mats=st.lists(mat_strategy, max_size=6), threshold=st.sampled_from([0.0, 0.5, 0.7, 0.8, 1.0, float("-inf")]))
def test_property_native_equals_python(mats, threshold):
    blocks = [torch.tensor(m, dtype=torch.float32).reshape(len(m), c) for m, c in mats]
    sims, offs, rows, cols = pack(blocks)
    native = greedy_match(sims, offs, rows, cols, threshold).tolist()
    assert native == greedy_match_python([m for m, _ in mats], threshold)
    assert native == greedy_match_reference(sims, offs, rows, cols, threshold).tolist()


def test_agrees_with_published_numpy_loop():
    published = pytest.importorskip("opgrpo_fast.published")
    blocks = random_blocks(300, seed=5)
    sims, offs, rows, cols = pack(blocks)
    for threshold in (0.5, 0.7, 0.9):
        want = [published.greedy_count(b.numpy(), threshold) for b in blocks]
        assert greedy_match(sims, offs, rows, cols, threshold).tolist() == want


# ---- semantics -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_is_not_optimal_assignment(device):
    # Greedy takes 0.9 at (0, 0) and is left with 0.1; the optimal assignment (0.8 + 0.8) has 2.
    assert all_three([torch.tensor([[0.9, 0.8], [0.8, 0.1]])], 0.7, device) == ([1],) * 3


@pytest.mark.parametrize("device", DEVICES)
def test_ties_resolve_in_row_major_order(device):
    # Three tied 0.9s: (0, 0) comes first, leaving only 0.1 -> 1 match (taking (0, 1) would give 2).
    assert all_three([torch.tensor([[0.9, 0.9], [0.9, 0.1]])], 0.7, device) == ([1],) * 3
    # Here the first tie (0, 1) leaves (1, 0) = 0.9 -> 2 (the last tie, (1, 1), would give 1).
    assert all_three([torch.tensor([[0.1, 0.9], [0.9, 0.9]])], 0.7, device) == ([2],) * 3
    # A block too large for the CUDA kernel's shared-memory flags (rows + cols > 1024) made of ties only:
    # the row-major rule matches (i, i) for every i.
    assert all_three([torch.full((1010, 20), 0.9), torch.full((20, 1010), 0.9)], 0.7, device) == ([20, 20],) * 3


@needs_c
def test_threaded_equals_serial():
    blocks = random_blocks(8000, seed=7)
    sims, offs, rows, cols = pack(blocks)
    assert sims.numel() >= 2 * _C.min_entries_per_thread  # large enough to start workers
    outs = []
    for threads in (1, 2, 0):
        out = torch.full((len(blocks),), -7, dtype=torch.int64)
        _C.greedy_match_cpu(sims, offs, rows, cols, out, 0.7, threads)
        outs.append(out.tolist())
    assert outs[0] == outs[1] == outs[2]
    assert outs[0][:200] == greedy_match_python([b.tolist() for b in blocks[:200]], 0.7)
    i = next(i for i in range(6000, 8000) if blocks[i].numel())
    sims[offs[i]] = float("nan")  # found by a worker thread, reported by block
    with pytest.raises(ValueError, match=f"sims contains NaN .*block {i}\\)"):
        _C.greedy_match_cpu(sims, offs, rows, cols, torch.empty(len(blocks), dtype=torch.int64), 0.7, 2)


# ---- validation ------------------------------------------------------------------------------


def _ok():
    return torch.tensor([0.9, 0.1, 0.8, 0.3, 0.5, 0.95]), torch.tensor([0, 4, 6]), torch.tensor([2, 1]), torch.tensor([2, 2])


BAD_INPUTS = {
    "nan": (lambda s, o, r, c: (s.index_fill(0, torch.tensor([4]), float("nan")), o, r, c), "sims contains NaN"),
    "offsets_len": (lambda s, o, r, c: (s, o[:-1], r, c), "sim_offsets must have N \\+ 1 = 3"),
    "last_offset": (lambda s, o, r, c: (s[:-1], o, r, c), "sim_offsets\\[-1\\] = 6 but sims has 5"),
    "float_offsets": (lambda s, o, r, c: (s, o.float(), r, c), "sim_offsets must be an integer tensor"),
    "inconsistent": (lambda s, o, r, c: (s, o, torch.tensor([1, 1]), c), "block 0 is 1 x 2 but sim_offsets"),
    "first_offset": (lambda s, o, r, c: (s, o + 1, r, c), "sim_offsets\\[0\\] must be 0"),
    "negative": (lambda s, o, r, c: (s, o, torch.tensor([2, -1]), torch.tensor([2, -2])), "negative size"),
    "n_cols_len": (lambda s, o, r, c: (s, o, r, c[:1]), "n_cols has 1 entries"),
    "2d_sims": (lambda s, o, r, c: (s.view(2, 3), o, r, c), "sims must be 1-D"),
    "int_sims": (lambda s, o, r, c: (s.long(), o, r, c), "sims must be a floating tensor"),
    "device": (lambda s, o, r, c: (s, o.to("meta"), r, c), "sim_offsets is on meta"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_clear_value_error(case, backend, device):
    make, message = BAD_INPUTS[case]
    args = on(device, *make(*_ok()))
    with use_backend(backend), pytest.raises(ValueError, match=message):
        greedy_match(*args)


def test_nan_threshold_rejected():
    with pytest.raises(ValueError, match="threshold is NaN"):
        greedy_match(*_ok(), threshold=float("nan"))


@needs_c
def test_binding_rejects_conversions_and_bad_lengths():
    sims, offs, rows, cols = _ok()
    out = torch.empty(2, dtype=torch.int64)
    with pytest.raises(TypeError):  # .noconvert(): float64 is never silently copied to float32
        _C.greedy_match_cpu(sims.double(), offs, rows, cols, out, 0.7, 0)
    with pytest.raises(TypeError):  # non-contiguous
        _C.greedy_match_cpu(torch.zeros(12)[::2], offs, rows, cols, out, 0.7, 0)
    with pytest.raises(ValueError, match="out must have 2 entries"):
        _C.greedy_match_cpu(sims, offs, rows, cols, out[:1], 0.7, 0)
    _C.greedy_match_cpu(sims, offs, rows, cols, out, 0.7, 0)
    assert out.tolist() == [1, 1]


# ---- composability ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_and_opcheck(device):
    blocks = random_blocks(40, seed=3)
    sims, offs, rows, cols = on(device, *pack(blocks))

    def fn(s, o, r, c):
        return greedy_match(s, o, r, c, 0.7) * 2 + 1

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=False)
    assert torch.equal(compiled(sims, offs, rows, cols), fn(sims, offs, rows, cols))
    if device == "cuda":  # validation reads the CUDA data (one sync): a graph break before the op
        torch.library.opcheck(torch.ops.opgrpo_fast.greedy_match.default, (sims, offs, rows, cols, 0.7))
        return

    seen = []  # on CPU the wrapper has no data-dependent step: one graph holding the opaque op

    def record(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    full = torch.compile(fn, backend=record, fullgraph=True)
    assert torch.equal(full(sims, offs, rows, cols), fn(sims, offs, rows, cols))
    assert any(t.startswith("opgrpo_fast.greedy_match") for t in seen), seen
    torch.library.opcheck(torch.ops.opgrpo_fast.greedy_match.default, (sims, offs, rows, cols, 0.7))


def test_requires_grad_input_is_fine():
    sims, offs, rows, cols = _ok()
    assert greedy_match(sims.requires_grad_(), offs, rows, cols).tolist() == [1, 1]


# ---- build / CUDA ----------------------------------------------------------------------------


@needs_c
def test_has_cuda_reflects_build_and_imports_without_gpu():
    assert isinstance(_C.has_cuda, bool)
    assert _dispatch.HAS_C_CUDA == _C.has_cuda
    assert hasattr(_C, "greedy_match_cuda") == _C.has_cuda == hasattr(_C, "cuda_device_count")
    code = "from opgrpo_fast import _C; print(_C.has_cuda, _C.cuda_device_count()[0] if _C.has_cuda else 0)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert res.returncode == 0, res.stderr
    has, count = res.stdout.split()
    assert has == str(_C.has_cuda) and int(count) <= 0  # no device visible: -1 (no driver) or 0
    if shutil.which("ldd"):
        deps = subprocess.run(["ldd", _C.__file__], capture_output=True, text=True).stdout
        assert "libcudart" not in deps and "libcuda." not in deps  # static cudart, driver loaded lazily


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_matches_reference():
    from opgrpo_fast.ops.greedy import _cuda_kernel_usable

    if _dispatch.HAS_C_CUDA:
        assert _cuda_kernel_usable(), "CUDA kernel compiled in but cannot start"
    g = torch.Generator().manual_seed(0)
    blocks = random_blocks(1025, seed=11) + [torch.rand(s, generator=g) for s in [(1100, 2), (2, 1100), (300, 400)]]
    blocks += [torch.full((40, 40), 0.9), torch.full((3, 70), float("-inf"))]  # all ties; -inf entries
    sims, offs, rows, cols = pack(blocks)
    want = greedy_match(sims, offs, rows, cols, 0.7)  # CPU C++ (or reference)
    cpu_ref = greedy_match_reference(sims[: offs[1025]], offs[:1026], rows[:1025], cols[:1025])
    assert want[:1025].tolist() == cpu_ref.tolist()
    dev = [t.cuda() for t in (sims, offs, rows, cols)]
    with torch.cuda.stream(torch.cuda.Stream()):
        got = greedy_match(*dev, 0.7)
        got_bf16 = greedy_match(dev[0].bfloat16(), *dev[1:], 0.7)
    torch.cuda.synchronize()
    assert got.device.type == "cuda" and got.tolist() == want.tolist()
    assert got_bf16.tolist() == greedy_match(sims.bfloat16(), offs, rows, cols, 0.7).tolist()
    assert greedy_match(*dev, float("-inf"))[-1].item() == 3
    with pytest.raises(ValueError, match="sims contains NaN"):
        greedy_match(dev[0].index_fill(0, torch.tensor([5], device="cuda"), float("nan")), *dev[1:])
