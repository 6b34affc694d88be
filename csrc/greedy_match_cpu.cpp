// CPU greedy matching over a ragged batch (see greedy_match.h for the semantics).
//
// Per block: collect the entries >= threshold, sort them by (value desc, flat index asc) and
// walk them, taking an entry when its row and its column are both still free. This takes
// exactly the entries the repeated-argmax greedy takes: entries below the threshold never
// matter (the greedy stops at the first one it would pick), and among the others the sorted
// walk visits them in the order argmax would, skipping the ones whose row or column is gone.
#include "greedy_match.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace opgrpo {
namespace {

template <typename Idx>
struct Entry {
  float v;
  Idx idx;  // row-major flat index inside the block
};

template <typename Idx>
inline bool before(const Entry<Idx>& a, const Entry<Idx>& b) {
  return a.v > b.v || (a.v == b.v && a.idx < b.idx);
}

// Per-worker scratch: stack storage for small blocks, heap vectors (grown, never shrunk,
// reused across blocks) for the rest, so a worker allocates at most a few times.
class Scratch {
 public:
  static constexpr int64_t kStackEntries = 128;  // blocks up to e.g. 8 x 16 stay on the stack
  static constexpr int64_t kStackFlags = 256;

  template <typename Idx>
  Entry<Idx>* entries(int64_t count);

  uint8_t* zeroed_flags(int64_t count) {
    uint8_t* p = stack_flags_;
    if (count > kStackFlags) {
      if (static_cast<int64_t>(heap_flags_.size()) < count) heap_flags_.resize(count);
      p = heap_flags_.data();
    }
    std::memset(p, 0, static_cast<size_t>(count));
    return p;
  }

 private:
  Entry<uint32_t> stack_entries_[kStackEntries];
  uint8_t stack_flags_[kStackFlags];
  std::vector<Entry<uint32_t>> heap32_;
  std::vector<Entry<int64_t>> heap64_;
  std::vector<uint8_t> heap_flags_;
};

template <>
Entry<uint32_t>* Scratch::entries<uint32_t>(int64_t count) {
  if (count <= kStackEntries) return stack_entries_;
  if (static_cast<int64_t>(heap32_.size()) < count) heap32_.resize(count);
  return heap32_.data();
}

template <>
Entry<int64_t>* Scratch::entries<int64_t>(int64_t count) {
  if (static_cast<int64_t>(heap64_.size()) < count) heap64_.resize(count);
  return heap64_.data();
}

template <typename Idx>
int64_t match_block(const float* s, int64_t rows, int64_t cols, float thr, Scratch& scratch) {
  const int64_t total = rows * cols;
  Entry<Idx>* buf = scratch.entries<Idx>(total);
  // Branch-free filter (about 1 entry in 10 passes, which a branch would mispredict):
  // always store, advance only for v >= thr or NaN.
  int64_t m = 0;
  bool nan = false;
  for (int64_t k = 0; k < total; ++k) {
    const float v = s[k];
    buf[m] = Entry<Idx>{v, static_cast<Idx>(k)};
    m += !(v < thr);
    nan |= v != v;
  }
  if (nan) return -1;
  if (m == 0) return 0;
  std::sort(buf, buf + m, before<Idx>);
  uint8_t* row_used = scratch.zeroed_flags(rows + cols);
  uint8_t* col_used = row_used + rows;
  const int64_t limit = std::min(rows, cols);
  int64_t matches = 0;
  for (int64_t j = 0; j < m; ++j) {
    const int64_t r = static_cast<int64_t>(buf[j].idx) / cols;
    const int64_t c = static_cast<int64_t>(buf[j].idx) - r * cols;
    if (row_used[r] | col_used[c]) continue;
    row_used[r] = col_used[c] = 1;
    if (++matches == limit) break;
  }
  return matches;
}

int64_t match_block(const float* s, int64_t rows, int64_t cols, float thr, Scratch& scratch) {
  if (rows == 0 || cols == 0) return 0;
  if (rows * cols <= static_cast<int64_t>(UINT32_MAX) + 1) return match_block<uint32_t>(s, rows, cols, thr, scratch);
  return match_block<int64_t>(s, rows, cols, thr, scratch);
}

void match_range(const float* sims, const int64_t* offsets, const int64_t* n_rows, const int64_t* n_cols,
                 int64_t begin, int64_t end, float thr, int64_t* out, Scratch& scratch) {
  for (int64_t i = begin; i < end; ++i) out[i] = match_block(sims + offsets[i], n_rows[i], n_cols[i], thr, scratch);
}

// How many workers a batch of `entries` matrix entries in `n` blocks is worth.
int plan_workers(int64_t entries, int64_t n, int num_threads) {
  int cap = num_threads > 0 ? num_threads : static_cast<int>(std::thread::hardware_concurrency());
  cap = std::max(cap, 1);
  const int64_t by_work = entries / kMinEntriesPerThread;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(cap), by_work, n})));
}

std::string block_name(int64_t i) { return "block " + std::to_string(i); }

}  // namespace

void validate_blocks(const int64_t* offsets, const int64_t* n_rows, const int64_t* n_cols, int64_t n,
                     int64_t sims_len) {
  if (offsets[0] != 0)
    throw std::invalid_argument("greedy_match: sim_offsets[0] must be 0, got " + std::to_string(offsets[0]));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = n_rows[i], c = n_cols[i], size = offsets[i + 1] - offsets[i];
    if (r < 0 || c < 0)
      throw std::invalid_argument("greedy_match: " + block_name(i) + " has a negative size " + std::to_string(r) +
                                  " x " + std::to_string(c));
    // size == r * c, tested without forming the (possibly overflowing) product.
    const bool ok = r == 0 ? size == 0 : (size >= 0 && size % r == 0 && size / r == c);
    if (!ok)
      throw std::invalid_argument("greedy_match: sizes inconsistent with sim_offsets: " + block_name(i) + " is " +
                                  std::to_string(r) + " x " + std::to_string(c) + " but sim_offsets[" +
                                  std::to_string(i + 1) + "] - sim_offsets[" + std::to_string(i) +
                                  "] = " + std::to_string(size));
  }
  if (offsets[n] != sims_len)
    throw std::invalid_argument("greedy_match: sim_offsets[-1] = " + std::to_string(offsets[n]) + " but sims has " +
                                std::to_string(sims_len) + " entries");
}

int64_t greedy_match_block(const float* block, int64_t rows, int64_t cols, float threshold) {
  Scratch scratch;
  return match_block(block, rows, cols, threshold, scratch);
}

void greedy_match_batch_cpu(const float* sims, int64_t sims_len, const int64_t* offsets, const int64_t* n_rows,
                            const int64_t* n_cols, int64_t n, float threshold, int64_t* out, int num_threads) {
  if (std::isnan(threshold)) throw std::invalid_argument("greedy_match: threshold is NaN");
  validate_blocks(offsets, n_rows, n_cols, n, sims_len);
  const int workers = plan_workers(sims_len, n, num_threads);
  if (workers <= 1) {
    Scratch scratch;
    match_range(sims, offsets, n_rows, n_cols, 0, n, threshold, out, scratch);
  } else {
    // Dynamic chunks of blocks: sizes vary, so a shared counter balances the workers.
    const int64_t chunk = std::max<int64_t>(1, n / (static_cast<int64_t>(workers) * 8));
    std::atomic<int64_t> next{0};
    auto work = [&] {
      Scratch scratch;
      for (int64_t b; (b = next.fetch_add(chunk, std::memory_order_relaxed)) < n;)
        match_range(sims, offsets, n_rows, n_cols, b, std::min(n, b + chunk), threshold, out, scratch);
    };
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    try {
      for (int w = 1; w < workers; ++w) pool.emplace_back(work);
    } catch (const std::system_error&) {
      // Could not start every thread: the ones running (and this one) share the work.
    }
    work();
    for (auto& t : pool) t.join();
  }
  for (int64_t i = 0; i < n; ++i)
    if (out[i] < 0)
      throw std::invalid_argument("greedy_match: sims contains NaN (first in " + block_name(i) +
                                  "); similarities must be finite or +-inf");
}

}  // namespace opgrpo
