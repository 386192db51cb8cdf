// Runtime queries for the CUDA build. Kept apart from the follower kernels so that the module imports on
// machines without a driver: nothing here runs until Python asks.
#include <cuda_runtime.h>

#include "cuda_api.h"

namespace sgpo {
int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error so later calls start clean
    return 0;
  }
  return n;
}
}  // namespace sgpo
