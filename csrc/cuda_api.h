// Host entry points of the CUDA translation units (plain C++ types only, so .cpp files can include it
// without the CUDA headers). Only launch glue lives behind these; the math is in the shared headers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "follower_cpu.h"

namespace sgpo {
int cuda_device_count();

// Scratch the CUDA follower needs (per-group pieces, selection state and histograms), in bytes.
std::size_t follower_cuda_workspace_bytes(std::size_t n, std::size_t group_size, int pieces);

// All pointers are device pointers; x holds float32 (or float64 when is_double), weights and shifts
// likewise, value and dual float64. Enqueues on `stream` and returns without synchronising.
void follower_cuda(std::uintptr_t x, bool is_double, const FollowerArgs& args, std::uintptr_t weights,
                   std::uintptr_t shifts, std::uintptr_t value, std::uintptr_t dual, std::uintptr_t workspace,
                   std::size_t workspace_bytes, std::uintptr_t stream);
}  // namespace sgpo
