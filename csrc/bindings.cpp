#include <nanobind/nanobind.h>
namespace nb = nanobind;
NB_MODULE(_C, m) { m.attr("has_cuda") = false; }
