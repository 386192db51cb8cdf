// Host entry points of the CUDA translation units (plain C++ types only, so .cpp files can include it
// without the CUDA headers). Only launch glue lives behind these; the math is in the shared headers.
#pragma once

namespace sgpo {
int cuda_device_count();
}  // namespace sgpo
