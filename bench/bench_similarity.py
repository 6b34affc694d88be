"""pairwise_cosine on a rollout-sized ragged batch: N = 640 completions, R in 3..8 references and
C in 2..12 candidate segments each, D = 384 float32 (MiniLM embeddings).

Group ``pairwise_cosine``: the baseline is the published code's per-completion style (normalise,
R x C matmul to numpy, a second C x C matmul and the Python double loop for redundancy); then the
per-completion reference, the vectorised CPU path, the public op (validation + dispatch), and the
Triton kernel when CUDA is available. Group ``pairwise_cosine_cuda_large`` (CUDA only): the Triton
kernel and the public op on the same batch tiled ``LARGE_TILE`` times (~200 MB of embeddings), where
the kernel is bandwidth- rather than launch-bound.

Every member records ``extra_info["bytes"]``: the bytes the op must read (embeddings, offsets) and
write (sims, sim_offsets, n_redundant) for its input; ``bench/gpu_report.py`` turns it into GB/s.

Run: ``python -m pytest bench/bench_similarity.py --benchmark-only -q -p no:cacheprovider``
"""
import pytest
import torch
import torch.nn.functional as F

from opgrpo_fast import ops
from opgrpo_fast.kernels.similarity import pairwise_cosine_reference, pairwise_cosine_triton
from opgrpo_fast.ops.similarity import pairwise_cosine_vectorised
from opgrpo_fast.published import redundant_count
from _benchutil import CUDA, cuda_synced, timed

N, D, THR = 640, 384, 0.78
LARGE_TILE = 16


def make_batch(device="cpu", tile=1):
    """The N-completion batch (``tile`` > 1: repeated ``tile`` times, offsets shifted)."""
    g = torch.Generator().manual_seed(0)
    n_ref = torch.randint(3, 9, (N,), generator=g)
    n_cand = torch.randint(2, 13, (N,), generator=g)
    topics = torch.randn(16, D, generator=g)  # segments share topics, so some are redundant
    cand = topics[torch.randint(0, 16, (int(n_cand.sum()),), generator=g)] + 0.6 * torch.randn(
        int(n_cand.sum()), D, generator=g)
    ref = torch.randn(int(n_ref.sum()), D, generator=g)
    cand, ref, n_cand, n_ref = cand.repeat(tile, 1), ref.repeat(tile, 1), n_cand.repeat(tile), n_ref.repeat(tile)
    off = lambda n: torch.cat([torch.zeros(1, dtype=torch.long), n.cumsum(0)])  # noqa: E731
    return tuple(t.to(device) for t in (cand, off(n_cand), ref, off(n_ref)))


def op_bytes(cand, co, ref, ro) -> int:
    """Compulsory traffic of one call: read both embedding matrices and offsets, write sims (float32),
    sim_offsets and n_redundant (int64)."""
    n = co.numel() - 1
    entries = int(((co[1:] - co[:-1]) * (ro[1:] - ro[:-1])).sum())
    read = cand.numel() * cand.element_size() + ref.numel() * ref.element_size() + (co.numel() + ro.numel()) * 8
    return read + entries * 4 + (n + 1) * 8 + n * 8


def published_style(cand, co, ref, ro, thr=THR):
    """Per completion, as opgrpo_fast.published does it: normalise each pair of sets, matmul, go to
    numpy, Python double loop for the sequential redundancy rule."""
    def cos(a, b):
        return (F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T).numpy()
    co, ro = co.tolist(), ro.tolist()
    sims, n_red = [], []
    for i in range(len(co) - 1):
        c, r = cand[co[i]:co[i + 1]], ref[ro[i]:ro[i + 1]]
        sims.append(cos(r, c))
        n_red.append(redundant_count(cos(c, c), thr))
    return sims, n_red


def public_op(*args):
    with ops.use_backend("auto"):
        return ops.pairwise_cosine(*args)


CASES = {  # name: (function, device, role)
    "baseline_published_loop": (published_style, "cpu", "baseline"),
    "reference_per_completion": (pairwise_cosine_reference, "cpu", "reference"),
    "vectorised_cpu": (pairwise_cosine_vectorised, "cpu", "vectorised"),
    "public_op_cpu": (public_op, "cpu", "public op (validation + dispatch)"),
    "triton_cuda": (cuda_synced(pairwise_cosine_triton), "cuda", "triton"),
}


@pytest.mark.benchmark(group="pairwise_cosine")
@pytest.mark.parametrize("name", list(CASES))
def test_pairwise_cosine(benchmark, name):
    fn, device, role = CASES[name]
    args = make_batch(device) if device == "cpu" or CUDA else ()
    out = timed(benchmark, fn, args, device, role=role, N=N, D=D, dtype="float32",
                segments=int(args[0].shape[0] + args[2].shape[0]) if args else 0, bytes=op_bytes(*args) if args else 0)
    if name != "baseline_published_loop":  # every member computes the same counts
        want = published_style(*(t.cpu() for t in args))[1]
        assert out[2].cpu().tolist() == want


@pytest.mark.benchmark(group="pairwise_cosine_cuda_large")
@pytest.mark.parametrize("name", ["triton_cuda", "public_op_cuda"])
def test_pairwise_cosine_cuda_large(benchmark, name):
    """The batch tiled LARGE_TILE times on CUDA: achieved bandwidth of the kernel (and the op)."""
    if not CUDA:
        pytest.skip("CUDA benchmark")
    fn = cuda_synced(pairwise_cosine_triton if name == "triton_cuda" else public_op)
    args = make_batch("cuda", tile=LARGE_TILE)
    out = timed(benchmark, fn, args, "cuda", role=name, N=N * LARGE_TILE, D=D, dtype="float32",
                segments=int(args[0].shape[0] + args[2].shape[0]), bytes=op_bytes(*args))
    want = published_style(*(t.cpu() for t in make_batch()))[1] * LARGE_TILE  # same data, tiled
    assert out[2].cpu().tolist() == want
