// Each part of the extension registers its functions on the module here; module.cpp calls them all.
#pragma once
#include <pybind11/pybind11.h>

namespace sgpo {
void bind_follower(pybind11::module_& m);
}  // namespace sgpo
