#include <pybind11/pybind11.h>

#include <string>

#include "bindings.h"
#ifdef SGPO_WITH_CUDA
#include "cuda_api.h"
#endif

#ifdef SGPO_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

#ifndef SGPO_VERSION
#define SGPO_VERSION "0.0.0"
#endif

static py::dict build_info() {
  py::dict info;
  info["version"] = SGPO_VERSION;
#ifdef SGPO_OPENMP
  info["openmp"] = true;
  info["threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["threads"] = 1;
#endif
#ifdef SGPO_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(SGPO_CUDA_ARCHS);
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::string();
#endif
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = std::string("unknown");
#endif
  return info;
}

static int cuda_device_count() {
#ifdef SGPO_WITH_CUDA
  return sgpo::cuda_device_count();
#else
  return 0;
#endif
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "sgpo native core: the exact SSAPO follower (C++/OpenMP and CUDA)";
  m.def("build_info", &build_info, "How this extension was built: version, openmp, threads, cuda, cuda_archs.");
  m.def("cuda_device_count", &cuda_device_count,
        "CUDA devices visible to the compiled CUDA runtime (0 when CUDA is not compiled in or no driver).");
  sgpo::bind_follower(m);
}
