// nanobind module opgrpo_fast._C: the greedy matcher's C++ (and, when built with
// OPGRPO_WITH_CUDA, CUDA) cores. Tensors arrive through DLPack as 1-D C-contiguous arrays;
// arguments are .noconvert(), so a wrong dtype / device / layout raises TypeError instead of
// being copied silently. Inconsistent shapes raise ValueError (std::invalid_argument).
// The output is allocated by the caller and filled in place. No libtorch linkage.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "greedy_match.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

template <typename T, typename Device>
using Vec = nb::ndarray<T, nb::ndim<1>, nb::c_contig, Device>;

// Length checks shared by both devices; returns the number of blocks N = len(n_rows).
int64_t check_lengths(size_t offsets_len, size_t n_rows_len, size_t n_cols_len, size_t out_len) {
  const auto n = static_cast<int64_t>(n_rows_len);
  auto expect = [n](const char* what, size_t got, int64_t want) {
    if (static_cast<int64_t>(got) != want)
      throw std::invalid_argument(std::string("greedy_match: ") + what + " must have " + std::to_string(want) +
                                  " entries (N = len(n_rows) = " + std::to_string(n) + "), got " +
                                  std::to_string(got));
  };
  expect("sim_offsets", offsets_len, n + 1);
  expect("n_cols", n_cols_len, n);
  expect("out", out_len, n);
  return n;
}

void greedy_match_cpu(Vec<const float, nb::device::cpu> sims, Vec<const int64_t, nb::device::cpu> offsets,
                      Vec<const int64_t, nb::device::cpu> n_rows, Vec<const int64_t, nb::device::cpu> n_cols,
                      Vec<int64_t, nb::device::cpu> out, double threshold, int num_threads) {
  const int64_t n = check_lengths(offsets.shape(0), n_rows.shape(0), n_cols.shape(0), out.shape(0));
  if (num_threads < 0) throw std::invalid_argument("greedy_match: num_threads must be >= 0");
  nb::gil_scoped_release release;
  opgrpo::greedy_match_batch_cpu(sims.data(), static_cast<int64_t>(sims.shape(0)), offsets.data(), n_rows.data(),
                                 n_cols.data(), n, static_cast<float>(threshold), out.data(), num_threads);
}

#ifdef OPGRPO_WITH_CUDA
using Cuda = nb::device::cuda;

void greedy_match_cuda(Vec<const float, Cuda> sims, Vec<const int64_t, Cuda> offsets, Vec<const int64_t, Cuda> n_rows,
                       Vec<const int64_t, Cuda> n_cols, Vec<int64_t, Cuda> out, Vec<uint8_t, Cuda> scratch,
                       double threshold, std::uintptr_t stream) {
  const int64_t n = check_lengths(offsets.shape(0), n_rows.shape(0), n_cols.shape(0), out.shape(0));
  const int device = sims.device_id();
  if (offsets.device_id() != device || n_rows.device_id() != device || n_cols.device_id() != device ||
      out.device_id() != device || scratch.device_id() != device)
    throw std::invalid_argument("greedy_match: all CUDA arrays must be on the same device");
  const auto sims_len = static_cast<int64_t>(sims.shape(0));
  if (static_cast<int64_t>(scratch.shape(0)) < sims_len + n)
    throw std::invalid_argument("greedy_match: scratch must hold at least len(sims) + N bytes");
  nb::gil_scoped_release release;
  opgrpo::greedy_match_batch_cuda(sims.data(), sims_len, offsets.data(), n_rows.data(), n_cols.data(), n,
                                  static_cast<float>(threshold), out.data(), scratch.data(), device, stream);
}

std::pair<int, std::string> cuda_device_count() {
  const char* error = "";
  const int count = opgrpo::cuda_device_count(&error);
  return {count, error};
}
#endif

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "opgrpo_fast C++/CUDA core: batched ragged greedy matching";
  m.def("greedy_match_cpu", &greedy_match_cpu, "sims"_a.noconvert(), "offsets"_a.noconvert(),
        "n_rows"_a.noconvert(), "n_cols"_a.noconvert(), "out"_a.noconvert(), "threshold"_a = 0.7,
        "num_threads"_a = 0,
        "Fill out (N,) int64 with the greedy match count of each block. sims: (S,) float32; offsets: (N+1,) "
        "int64; n_rows, n_cols: (N,) int64; all CPU, contiguous. num_threads: 0 = all cores, 1 = serial.");
  m.attr("min_entries_per_thread") = opgrpo::kMinEntriesPerThread;
#ifdef OPGRPO_WITH_CUDA
  m.def("greedy_match_cuda", &greedy_match_cuda, "sims"_a.noconvert(), "offsets"_a.noconvert(),
        "n_rows"_a.noconvert(), "n_cols"_a.noconvert(), "out"_a.noconvert(), "scratch"_a.noconvert(),
        "threshold"_a, "stream"_a,
        "CUDA version of greedy_match_cpu, asynchronous on `stream` (cudaStream_t as int). scratch: uint8 "
        ">= S + N bytes. Block contents are not validated here (inconsistent blocks get -1).");
  m.def("cuda_device_count", &cuda_device_count,
        "(count, error): visible CUDA devices, or (-1, CUDA error text) when the runtime cannot start.");
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
