#include "bindings.h"

namespace sgpo {
void bind_follower(pybind11::module_& m) { (void)m; }
}  // namespace sgpo
