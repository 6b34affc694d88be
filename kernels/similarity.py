"""Fused normalise + cosine + redundancy threshold over a ragged batch (the Overton reward's
similarity step).

Layout (shared by every implementation)
---------------------------------------
``cand``         (Nc, D) float16/bfloat16/float32, candidate-segment embeddings of all N completions
                 concatenated; completion i owns rows ``cand_offsets[i]:cand_offsets[i+1]`` (C_i rows).
``cand_offsets`` (N+1,) int64, cumulative, ``cand_offsets[0] == 0``, ``cand_offsets[-1] == Nc``.
``ref``          (Nr, D) float, reference embeddings; completion i owns ``ref_offsets[i]:ref_offsets[i+1]`` (R_i).
``ref_offsets``  (N+1,) int64, cumulative.
``sims``         (S,) float32 flat ragged; block i is the row-major (R_i, C_i) cosine matrix
                 (rows = references, columns = candidates) at ``sims[sim_offsets[i]:sim_offsets[i+1]]``.
``sim_offsets``  (N+1,) int64, cumulative sum of R_i * C_i.
``n_redundant``  (N,) int64: sequential redundancy count over each completion's candidates
                 (candidate j is redundant when an earlier *non-redundant* candidate i has
                 ``cos(c_i, c_j) >= threshold``; the comparison is made in float32).

Embeddings need not be normalised: cos(x, y) = <x / max(|x|, eps), y / max(|y|, eps)>, accumulated
in float32 from any input dtype (``F.normalize`` + matmul semantics).

Contents: ``_pairwise_cosine_kernel`` (Triton) -> ``pairwise_cosine_triton`` (launcher) ->
``pairwise_cosine_reference`` (pure PyTorch, per-completion loop). Input validation lives in the
public op, :func:`opgrpo_fast.ops.similarity.pairwise_cosine`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton is an optional extra: the reference below must import without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

# Largest per-completion segment count the kernel handles. One program keeps the (BLOCK_C, BLOCK_C)
# candidate Gram matrix and the (BLOCK_R, BLOCK_C) reference block in registers, and the sequential
# redundancy scan costs BLOCK_C masked row reductions of that matrix; past 128 the accumulators spill
# and the scan dominates, so callers fall back to the vectorised PyTorch path (bmm + a Cmax loop).
MAX_SEGMENTS = 128


def _seg_counts(offsets: torch.Tensor) -> torch.Tensor:
    """(N+1,) int64 cumulative offsets -> (N,) int64 segment counts."""
    return offsets[1:] - offsets[:-1]


def sim_offsets_from(cand_offsets: torch.Tensor, ref_offsets: torch.Tensor) -> torch.Tensor:
    """(N+1,) int64 offsets of the flat sims: cumulative R_i * C_i, starting at 0."""
    sizes = _seg_counts(ref_offsets) * _seg_counts(cand_offsets)
    return torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])


if triton is not None:

    @triton.jit
    def _pairwise_cosine_kernel(
        cand_ptr, cand_off_ptr, ref_ptr, ref_off_ptr, sim_off_ptr, sims_ptr, nred_ptr,
        D, stride_c, stride_r, threshold, eps,
        BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """One program per completion i.

        Loops over D in BLOCK_D chunks, accumulating with ``tl.dot`` (fp32 accumulator;
        ``DOT_PRECISION`` is "ieee" for fp32 tiles, never TF32) the reference x candidate block
        G_rc (BLOCK_R, BLOCK_C), the candidate Gram matrix G_cc (BLOCK_C, BLOCK_C) and both squared
        row norms; then scales by
        the clamped inverse norms, stores the (R_i, C_i) block row-major at ``sim_offsets[i]`` and runs
        the sequential redundancy scan on the thresholded G_cc. ``DOT_FP32`` upcasts the tiles before
        ``tl.dot``; the launcher sets it for bfloat16 under ``TRITON_INTERPRET=1``, whose ``tl.dot``
        multiplies bfloat16 bit patterns (triton-lang/triton#11584).
        """
        pid = tl.program_id(0)
        c0 = tl.load(cand_off_ptr + pid)
        n_c = tl.load(cand_off_ptr + pid + 1) - c0
        r0 = tl.load(ref_off_ptr + pid)
        n_r = tl.load(ref_off_ptr + pid + 1) - r0
        s0 = tl.load(sim_off_ptr + pid)

        offs_c = tl.arange(0, BLOCK_C)
        offs_r = tl.arange(0, BLOCK_R)
        offs_d = tl.arange(0, BLOCK_D)
        mask_c = offs_c < n_c
        mask_r = offs_r < n_r

        g_rc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        g_cc = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32)
        sq_c = tl.zeros((BLOCK_C,), dtype=tl.float32)
        sq_r = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            mask_d = dd < D
            c = tl.load(cand_ptr + (c0 + offs_c)[:, None] * stride_c + dd[None, :],
                        mask=mask_c[:, None] & mask_d[None, :], other=0.0)
            r = tl.load(ref_ptr + (r0 + offs_r)[:, None] * stride_r + dd[None, :],
                        mask=mask_r[:, None] & mask_d[None, :], other=0.0)
            if DOT_FP32:  # exact either way: a bf16/fp16 product fits a float32 mantissa
                c = c.to(tl.float32)
                r = r.to(tl.float32)
            ct = tl.trans(c)
            g_rc = tl.dot(r, ct, g_rc, input_precision=DOT_PRECISION)
            g_cc = tl.dot(c, ct, g_cc, input_precision=DOT_PRECISION)
            c32 = c.to(tl.float32)
            r32 = r.to(tl.float32)
            sq_c += tl.sum(c32 * c32, axis=1)
            sq_r += tl.sum(r32 * r32, axis=1)

        inv_c = 1.0 / tl.maximum(tl.sqrt(sq_c), eps)
        inv_r = 1.0 / tl.maximum(tl.sqrt(sq_r), eps)
        cos_rc = g_rc * inv_r[:, None] * inv_c[None, :]
        tl.store(sims_ptr + s0 + offs_r[:, None] * n_c + offs_c[None, :], cos_rc,
                 mask=mask_r[:, None] & mask_c[None, :])

        # hit[i, j]: candidate i (if itself kept) marks a later candidate j redundant.
        cos_cc = g_cc * inv_c[:, None] * inv_c[None, :]
        hit = (cos_cc >= threshold) & (offs_c[None, :] > offs_c[:, None]) & mask_c[None, :]
        hit = hit.to(tl.int32)
        redundant = tl.zeros((BLOCK_C,), dtype=tl.int32)
        for i in range(0, n_c):
            # Row i of `hit` and redundant[i], extracted with masked reductions (no dynamic indexing).
            is_red = tl.sum(tl.where(offs_c == i, redundant, 0), axis=0)
            row = tl.sum(tl.where(offs_c[:, None] == i, hit, 0), axis=0)
            redundant = tl.maximum(redundant, row * (1 - is_red))
        tl.store(nred_ptr + pid, tl.sum(redundant, axis=0).to(tl.int64))


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def pairwise_cosine_triton(cand, cand_offsets, ref, ref_offsets, redundancy_threshold=0.78, eps=1e-12,
                           max_c: int | None = None, max_r: int | None = None):
    """Launch ``_pairwise_cosine_kernel`` (grid = (N,)). Inputs as in the module docstring, already
    validated, on one device (CUDA, or CPU under ``TRITON_INTERPRET=1``); ``cand``/``ref`` are promoted
    to a common dtype. ``max_c``/``max_r`` (largest C_i / R_i) may be passed to skip a device sync.

    Returns ``(sims (S,) float32, sim_offsets (N+1,) int64, n_redundant (N,) int64)``. Requires
    ``max(max_c, max_r) <= MAX_SEGMENTS`` (the public op falls back to the vectorised path beyond).
    """
    if triton is None:
        raise RuntimeError("pairwise_cosine_triton needs the triton package")
    dtype = torch.promote_types(cand.dtype, ref.dtype)
    cand = cand.to(dtype).contiguous()
    ref = ref.to(dtype).contiguous()
    cand_offsets = cand_offsets.to(device=cand.device, dtype=torch.int64).contiguous()
    ref_offsets = ref_offsets.to(device=cand.device, dtype=torch.int64).contiguous()
    n = cand_offsets.numel() - 1
    sim_offsets = sim_offsets_from(cand_offsets, ref_offsets)
    if max_c is None or max_r is None:
        mc, mr = (torch.stack([_seg_counts(cand_offsets).max(), _seg_counts(ref_offsets).max()]).tolist()
                  if n > 0 else (0, 0))
        max_c, max_r = (mc if max_c is None else max_c), (mr if max_r is None else max_r)
    if max(max_c, max_r) > MAX_SEGMENTS:
        raise ValueError(f"pairwise_cosine_triton: at most {MAX_SEGMENTS} segments per completion "
                         f"(got {max(max_c, max_r)}); use the vectorised path")
    total = int(sim_offsets[-1]) if n > 0 else 0
    sims = torch.empty(total, dtype=torch.float32, device=cand.device)
    n_red = torch.zeros(n, dtype=torch.int64, device=cand.device)
    if n == 0:
        return sims, sim_offsets, n_red
    d = cand.shape[1]
    # The interpreter pays per loop iteration, the GPU per register: one wide chunk vs 64-wide chunks.
    block_d = _block(min(d, 512)) if cand.device.type == "cpu" else _block(min(d, 64))
    block_c, block_r = _block(max_c), _block(max_r)
    dot_fp32 = cand.device.type == "cpu" and dtype == torch.bfloat16  # interpreter workaround, see kernel
    _pairwise_cosine_kernel[(n,)](
        cand, cand_offsets, ref, ref_offsets, sim_offsets, sims, n_red,
        d, cand.stride(0), ref.stride(0), float(redundancy_threshold), float(eps),
        BLOCK_C=block_c, BLOCK_R=block_r, BLOCK_D=block_d,
        DOT_FP32=dot_fp32, DOT_PRECISION="ieee" if dot_fp32 or dtype.itemsize >= 4 else "tf32",  # 16-bit: unused
        num_warps=4 if block_c <= 32 else 8,
    )
    return sims, sim_offsets, n_red


def sequential_redundant(is_close: list[list[bool]]) -> int:
    """The redundancy rule, literally: ``is_close[i][j]`` = cos(c_i, c_j) >= threshold (i < j)."""
    n = len(is_close)
    redundant = [False] * n
    for i in range(n):
        if redundant[i]:
            continue
        for j in range(i + 1, n):
            if is_close[i][j]:
                redundant[j] = True
    return sum(redundant)


def pairwise_cosine_reference(cand, cand_offsets, ref, ref_offsets, redundancy_threshold=0.78, eps=1e-12,
                              upcast: bool = True):
    """Pure-PyTorch reference: a Python loop over completions, ``F.normalize`` + matmul each.

    ``upcast=True`` computes in ``promote_types(dtype, float32)`` (the accuracy reference; pass
    float64 inputs for a float64 one); ``upcast=False`` computes in the input dtype (the "same-dtype
    PyTorch" error of the flash-attention accuracy rule). Shapes/dtypes of inputs and outputs as in
    the module docstring; ``sims`` is always float32 and the threshold test uses the cosines cast to
    float32.
    """
    dtype = torch.promote_types(cand.dtype, ref.dtype)
    if upcast:
        dtype = torch.promote_types(dtype, torch.float32)
    co, ro = cand_offsets.tolist(), ref_offsets.tolist()
    sims, n_red = [], []
    for i in range(len(co) - 1):
        c = F.normalize(cand[co[i]:co[i + 1]].to(dtype), dim=-1, eps=eps)
        r = F.normalize(ref[ro[i]:ro[i + 1]].to(dtype), dim=-1, eps=eps)
        sims.append((r @ c.T).reshape(-1).float())
        close = ((c @ c.T).float() >= redundancy_threshold).tolist()
        n_red.append(sequential_redundant(close))
    sim_offsets = sim_offsets_from(cand_offsets.long(), ref_offsets.long())
    flat = torch.cat(sims) if sims else torch.zeros(0, device=cand.device)
    return flat.to(device=cand.device, dtype=torch.float32), sim_offsets, torch.tensor(
        n_red, dtype=torch.int64, device=cand.device)
