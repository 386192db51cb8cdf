// Python bindings of the follower: CPU arrays through the buffer protocol, CUDA memory as raw device
// pointers plus the caller's stream (the extension does not link libtorch).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "bindings.h"
#include "follower_cpu.h"
#ifdef SGPO_WITH_CUDA
#include "cuda_api.h"
#endif

namespace py = pybind11;

namespace sgpo {
namespace {

FollowerArgs make_args(std::size_t n, std::size_t group_size, int space, int pieces, double epsilon, double lo,
                       double hi, double max_shift, int strategy) {
  if (group_size < 1) throw std::invalid_argument("group_size must be >= 1, got " + std::to_string(group_size));
  if (space != 0 && space != 1) throw std::invalid_argument("space must be 0 (probability) or 1 (margin)");
  if (pieces < 1) throw std::invalid_argument("pieces must be >= 1, got " + std::to_string(pieces));
  if (!(epsilon >= 0.0) || std::isinf(epsilon)) throw std::invalid_argument("epsilon must be finite and >= 0");
  if (!(max_shift >= 0.0)) throw std::invalid_argument("max_shift must be >= 0 (inf for no cap)");
  if (strategy != 0 && strategy != 1) throw std::invalid_argument("strategy must be 0 (select) or 1 (radix)");
  const bool has_support = !std::isnan(lo) || !std::isnan(hi);
  if (has_support && !(lo < hi && std::isfinite(lo) && std::isfinite(hi)))
    throw std::invalid_argument("support must be finite with lo < hi");
  return FollowerArgs{n,  group_size, space,     pieces, epsilon, has_support, lo, hi, max_shift,
                      static_cast<Strategy>(strategy)};
}

template <class T>
py::tuple run_cpu(const py::array& x_in, const FollowerArgs& A) {
  auto x = py::array_t<T, py::array::c_style>::ensure(x_in);
  const std::size_t n = A.n, K = static_cast<std::size_t>(A.pieces);
  const std::size_t G = (n + A.group_size - 1) / A.group_size;
  py::array_t<T> W({n, K}), D({n, K});
  py::array_t<double> value(G), dual(G);
  const T* xp = x.data();
  T* wp = W.mutable_data();
  T* dp = D.mutable_data();
  double* vp = value.mutable_data();
  double* up = dual.mutable_data();
  {
    py::gil_scoped_release release;
    follower_cpu<T>(xp, A, wp, dp, vp, up);
  }
  return py::make_tuple(W, D, value, dual);
}

py::tuple follower_cpu_py(const py::array& x, std::size_t group_size, int space, int pieces, double epsilon,
                          double lo, double hi, double max_shift, int strategy) {
  if (x.ndim() != 1) throw std::invalid_argument("margins must be 1-D");
  if (x.shape(0) < 1) throw std::invalid_argument("margins must not be empty");
  const FollowerArgs A = make_args(static_cast<std::size_t>(x.shape(0)), group_size, space, pieces, epsilon, lo, hi,
                                   max_shift, strategy);
  if (x.dtype().is(py::dtype::of<float>())) return run_cpu<float>(x, A);
  if (x.dtype().is(py::dtype::of<double>())) return run_cpu<double>(x, A);
  throw std::invalid_argument("margins must be float32 or float64");
}

}  // namespace

void bind_follower(py::module_& m) {
  m.def("follower_cpu", &follower_cpu_py, py::arg("margins"), py::arg("group_size"), py::arg("space"),
        py::arg("pieces"), py::arg("epsilon"), py::arg("lo"), py::arg("hi"), py::arg("max_shift"),
        py::arg("strategy") = 0,
        "Exact SSAPO follower on the CPU. lo/hi NaN: the space's default support; max_shift inf: no cap; "
        "strategy 0: sampling + quickselect, 1: the CUDA path's radix selection. Returns (weights, shifts, "
        "value, dual).");
#ifdef SGPO_WITH_CUDA
  m.def(
      "follower_cuda_workspace_bytes",
      [](std::size_t n, std::size_t group_size, int pieces) {
        return follower_cuda_workspace_bytes(n, group_size, pieces);
      },
      py::arg("n"), py::arg("group_size"), py::arg("pieces"));
  m.def(
      "follower_cuda",
      [](std::uintptr_t x, bool is_double, std::size_t n, std::size_t group_size, int space, int pieces,
         double epsilon, double lo, double hi, double max_shift, std::uintptr_t weights, std::uintptr_t shifts,
         std::uintptr_t value, std::uintptr_t dual, std::uintptr_t workspace, std::size_t workspace_bytes,
         std::uintptr_t stream) {
        if (n < 1) throw std::invalid_argument("margins must not be empty");
        const FollowerArgs A = make_args(n, group_size, space, pieces, epsilon, lo, hi, max_shift, 1);
        follower_cuda(x, is_double, A, weights, shifts, value, dual, workspace, workspace_bytes, stream);
      },
      py::arg("margins"), py::arg("is_double"), py::arg("n"), py::arg("group_size"), py::arg("space"),
      py::arg("pieces"), py::arg("epsilon"), py::arg("lo"), py::arg("hi"), py::arg("max_shift"), py::arg("weights"),
      py::arg("shifts"), py::arg("value"), py::arg("dual"), py::arg("workspace"), py::arg("workspace_bytes"),
      py::arg("stream"),
      "Exact SSAPO follower on a CUDA device: raw device pointers (weights/shifts of the margins' dtype, "
      "value/dual float64) and a cudaStream_t as an integer. Asynchronous on that stream.");
#endif
}

}  // namespace sgpo
