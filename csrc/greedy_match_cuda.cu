// CUDA greedy matching over a ragged batch (see greedy_match.h for the semantics).
//
// One warp per block (grid-stride over blocks). Each round, every lane scans its strided
// share of the remaining entries >= threshold, keeping its largest (lowest flat index on a
// tie: a lane visits its indices in increasing order and only replaces on a strict >); a
// butterfly shuffle reduction then picks the warp's (value desc, index asc) winner. Lane 0
// marks the winner's row and column removed, and the round repeats until nothing >= threshold
// remains or min(rows, cols) matches were made. Filtering on ">= threshold" inside the scan is
// equivalent to the literal greedy: the global argmax is >= threshold iff some remaining entry
// is, and then it is the argmax of those entries.
//
// Row/column "removed" flags live in shared memory (one slice per warp) when rows + cols fits,
// otherwise in the caller's global scratch at scratch[offsets[i] + i], whose slot holds
// rows * cols + 1 >= rows + cols bytes for a non-empty block, so slots never overlap.
#include "greedy_match.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace opgrpo {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kSmemFlags = 1024;  // rows + cols bytes per warp held in shared memory
constexpr unsigned kFullMask = 0xffffffffu;

struct Best {
  float v;
  long long idx;  // < 0: no candidate
};

__device__ __forceinline__ bool beats(float v, long long idx, const Best& b) {
  return idx >= 0 && (b.idx < 0 || v > b.v || (v == b.v && idx < b.idx));
}

__device__ __forceinline__ Best warp_argmax(Best b) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const float v = __shfl_xor_sync(kFullMask, b.v, off);
    const long long idx = __shfl_xor_sync(kFullMask, b.idx, off);
    if (beats(v, idx, b)) b = Best{v, idx};
  }
  return b;  // identical in every lane: the order is total on distinct indices
}

// This lane's best remaining entry >= thr. Idx: 32-bit when the block allows (cheaper division).
template <typename Idx>
__device__ __forceinline__ Best lane_scan(const float* blk, Idx total, Idx cols, const uint8_t* row_used,
                                          const uint8_t* col_used, float thr, int lane) {
  Best best{0.f, -1};
  for (Idx k = lane; k < total; k += kWarp) {
    const Idx r = k / cols;
    if (row_used[r] | col_used[k - r * cols]) continue;
    const float v = blk[k];
    if (v >= thr && (best.idx < 0 || v > best.v)) best = Best{v, static_cast<long long>(k)};
  }
  return best;
}

__device__ __forceinline__ bool block_ok(long long r, long long c, long long begin, long long end,
                                         long long sims_len) {
  const long long size = end - begin;
  if (r < 0 || c < 0 || begin < 0 || end > sims_len || size < 0) return false;
  return r == 0 ? size == 0 : (size % r == 0 && size / r == c);
}

__global__ void __launch_bounds__(kWarp* kWarpsPerBlock)
    greedy_match_kernel(const float* __restrict__ sims, long long sims_len, const long long* __restrict__ offsets,
                        const long long* __restrict__ n_rows, const long long* __restrict__ n_cols, long long n,
                        float thr, long long* __restrict__ out, uint8_t* __restrict__ scratch) {
  __shared__ uint8_t smem[kWarpsPerBlock][kSmemFlags];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const long long stride = static_cast<long long>(gridDim.x) * kWarpsPerBlock;
  for (long long b = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + warp; b < n; b += stride) {
    const long long rows = n_rows[b], cols = n_cols[b], begin = offsets[b], end = offsets[b + 1];
    long long matches = 0;
    if (!block_ok(rows, cols, begin, end, sims_len)) {
      matches = -1;
    } else if (rows > 0 && cols > 0) {
      uint8_t* row_used = rows + cols <= kSmemFlags ? smem[warp] : scratch + begin + b;
      uint8_t* col_used = row_used + rows;
      for (long long k = lane; k < rows + cols; k += kWarp) row_used[k] = 0;
      __syncwarp();
      const float* blk = sims + begin;
      const long long total = end - begin, limit = min(rows, cols);
      const bool narrow = total <= 0x7fffffffLL;
      while (matches < limit) {
        const Best mine = narrow ? lane_scan<unsigned>(blk, static_cast<unsigned>(total), static_cast<unsigned>(cols),
                                                       row_used, col_used, thr, lane)
                                 : lane_scan<long long>(blk, total, cols, row_used, col_used, thr, lane);
        const Best best = warp_argmax(mine);
        if (best.idx < 0) break;
        if (lane == 0) {
          row_used[best.idx / cols] = 1;
          col_used[best.idx % cols] = 1;
        }
        __syncwarp();  // flags visible to the whole warp before the next scan
        ++matches;
      }
    }
    if (lane == 0) out[b] = matches;
    __syncwarp();  // the next block of this warp reuses the shared flags
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("greedy_match_cuda: ") + what + ": " + cudaGetErrorString(err));
}

// Makes `device` current for the launch and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) check(cudaSetDevice(device), "cudaSetDevice");
    device_ = device;
  }
  ~DeviceGuard() {
    if (prev_ != device_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0, device_ = 0;
};

}  // namespace

void greedy_match_batch_cuda(const float* sims, int64_t sims_len, const int64_t* offsets, const int64_t* n_rows,
                             const int64_t* n_cols, int64_t n, float threshold, int64_t* out, uint8_t* scratch,
                             int device_id, std::uintptr_t stream) {
  if (n == 0) return;
  DeviceGuard guard(device_id);
  const long long blocks = std::min<long long>((n + kWarpsPerBlock - 1) / kWarpsPerBlock, 1LL << 20);
  static_assert(sizeof(long long) == sizeof(int64_t), "int64_t must be long long wide");
  greedy_match_kernel<<<static_cast<unsigned>(blocks), kWarp * kWarpsPerBlock, 0,
                        reinterpret_cast<cudaStream_t>(stream)>>>(
      sims, sims_len, reinterpret_cast<const long long*>(offsets), reinterpret_cast<const long long*>(n_rows),
      reinterpret_cast<const long long*>(n_cols), n, threshold, reinterpret_cast<long long*>(out), scratch);
  check(cudaGetLastError(), "kernel launch");
}

int cuda_device_count(const char** error) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (error) *error = cudaGetErrorString(err);
    cudaGetLastError();  // reset the runtime's last-error state
    return -1;
  }
  return count;
}

}  // namespace opgrpo
