// Batched ragged greedy matching: the shared declarations of the CPU and CUDA cores.
//
// A batch holds N row-major similarity matrices packed into one float32 array:
// block i is an (n_rows[i], n_cols[i]) matrix at sims[offsets[i] : offsets[i+1]].
// Per block, greedy matching repeatedly takes the largest remaining entry (ties: the
// lowest row-major flat index); while it is >= threshold (compared in float32) it counts
// a match and removes that entry's row and column, otherwise it stops. The result is the
// number of matches per block. Empty blocks (0 rows or 0 cols) give 0.
//
// Nothing here depends on Python, nanobind or libtorch.
#pragma once

#include <cstdint>

namespace opgrpo {

// Thrown for inconsistent input (bindings translate it to ValueError).
// Returns normally when `offsets` (n + 1 entries), `n_rows`, `n_cols` (n entries) describe
// blocks that tile exactly `sims_len` floats: offsets[0] == 0, sizes >= 0,
// offsets[i+1] - offsets[i] == n_rows[i] * n_cols[i] (checked without overflow) and
// offsets[n] == sims_len. All pointers are host pointers.
void validate_blocks(const int64_t* offsets, const int64_t* n_rows, const int64_t* n_cols, int64_t n,
                     int64_t sims_len);

// Greedy matches of one row-major (rows x cols) block. Returns -1 when the block holds a NaN.
int64_t greedy_match_block(const float* block, int64_t rows, int64_t cols, float threshold);

// Smallest number of matrix entries for which the CPU batch spawns one more worker thread.
constexpr int64_t kMinEntriesPerThread = 1 << 16;

// CPU batch: validates (validate_blocks), then fills out[0..n) in place. Parallel over blocks
// with std::thread when the batch holds at least 2 * kMinEntriesPerThread entries;
// num_threads caps the workers (0 = std::thread::hardware_concurrency(), 1 = serial).
// Throws std::invalid_argument when a block contains NaN.
void greedy_match_batch_cpu(const float* sims, int64_t sims_len, const int64_t* offsets, const int64_t* n_rows,
                            const int64_t* n_cols, int64_t n, float threshold, int64_t* out, int num_threads);

#ifdef OPGRPO_WITH_CUDA
// CUDA batch: one warp per block, launched asynchronously on `stream` (a cudaStream_t as an
// integer) of device `device_id`. Every pointer is device memory. The block contents are not
// validated on the host (that would need a copy); an inconsistent block is skipped and gets
// out[i] = -1. `scratch` is a uint8 buffer of >= sims_len + n bytes used for the row/column
// flags of blocks too large for shared memory. Throws std::runtime_error on a CUDA error.
void greedy_match_batch_cuda(const float* sims, int64_t sims_len, const int64_t* offsets, const int64_t* n_rows,
                             const int64_t* n_cols, int64_t n, float threshold, int64_t* out, uint8_t* scratch,
                             int device_id, std::uintptr_t stream);

// Number of visible CUDA devices, or -1 (and the CUDA error text in *error) when the CUDA
// runtime cannot start here (no driver, or a driver older than the toolkit's runtime).
int cuda_device_count(const char** error);
#endif

}  // namespace opgrpo
