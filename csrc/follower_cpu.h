// The exact follower on the CPU (C++/OpenMP). See follower.h for the math.
#pragma once

#include <cstddef>

namespace sgpo {

// How lambda* is selected on the CPU: kSelect (sampling bracket + weighted quickselect, the fast path) or
// kRadix (the digit-by-digit selection the CUDA kernels run, kept here so the CPU tests cover it).
enum class Strategy : int { kSelect = 0, kRadix = 1 };

struct FollowerArgs {
  std::size_t n;
  std::size_t group_size;
  int space;
  int pieces;
  double epsilon;
  bool has_support;
  double lo;
  double hi;
  double max_shift;  // +inf: no per-entry cap
  Strategy strategy;
};

// x: n margins; weights, shifts: n * pieces, row-major; value, dual: one per group.
template <class T>
void follower_cpu(const T* x, const FollowerArgs& args, T* weights, T* shifts, double* value, double* dual);

}  // namespace sgpo
