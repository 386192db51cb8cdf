// The exact follower on a CUDA device: launch glue only. The per-margin items, the radix choice of lambda*
// and the primal recovery are the __host__ __device__ functions of follower.h, which the CPU tests run
// (strategy "radix" of the CPU path executes this same sequence of steps serially).
//
// Per call, all on the caller's stream and with no host round trip: one setup kernel (support, pieces),
// then for each of the 8 radix passes a weighted histogram kernel and a choose kernel, then the output kernel
// (weights, shifts, per-group objective) and a finishing kernel (value, dual).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_api.h"
#include "follower.h"

namespace sgpo {
namespace {

using follower::Base;
using follower::Pieces;
using follower::RadixState;
using follower::Threshold;

constexpr int kThreads = 256;
constexpr std::size_t kChunk = 4096;  // margins per block: one block never spans two groups

struct Workspace {
  double* lo;
  double* hi;
  double* a;
  double* b;
  double* at_lo;
  int* order;
  RadixState* state;
  double* hist;
  double* objective;
};

std::size_t align_up(std::size_t v) { return (v + 255) & ~std::size_t(255); }

// Lays the workspace out in one buffer; with base == nullptr it only measures it.
std::size_t layout(char* base, std::size_t G, int K, Workspace* ws) {
  std::size_t off = 0;
  auto take = [&](std::size_t bytes) {
    char* p = base ? base + off : nullptr;
    off += align_up(bytes);
    return p;
  };
  const std::size_t GK = G * std::size_t(K);
  Workspace w;
  w.lo = reinterpret_cast<double*>(take(G * sizeof(double)));
  w.hi = reinterpret_cast<double*>(take(G * sizeof(double)));
  w.a = reinterpret_cast<double*>(take(GK * sizeof(double)));
  w.b = reinterpret_cast<double*>(take(GK * sizeof(double)));
  w.at_lo = reinterpret_cast<double*>(take(GK * sizeof(double)));
  w.order = reinterpret_cast<int*>(take(GK * sizeof(int)));
  w.state = reinterpret_cast<RadixState*>(take(G * sizeof(RadixState)));
  w.hist = reinterpret_cast<double*>(take(G * follower::kRadixBins * sizeof(double)));
  w.objective = reinterpret_cast<double*>(take(G * sizeof(double)));
  if (ws) *ws = w;
  return off;
}

struct Launch {
  std::size_t n, group_size, groups, blocks_per_group;
  int space, K;
  double epsilon, lo, hi, max_shift;
  bool has_support;
};

__device__ __forceinline__ Pieces group_pieces(const Workspace& ws, std::size_t g, int K) {
  const std::size_t o = g * std::size_t(K);
  return Pieces{ws.a + o, ws.b + o, ws.at_lo + o, ws.order + o, K, ws.lo[g]};
}

__device__ __forceinline__ void group_range(const Launch& L, std::size_t g, std::size_t* start, std::size_t* m) {
  *start = g * L.group_size;
  const std::size_t left = L.n - *start;
  *m = left < L.group_size ? left : L.group_size;
}

template <class T>
__global__ void setup_kernel(const T* x, Launch L, Workspace ws) {
  const std::size_t g = blockIdx.x;
  std::size_t start, m;
  group_range(L, g, &start, &m);
  __shared__ double s_min[kThreads], s_max[kThreads];
  double lo = L.lo, hi = L.hi;
  if (!L.has_support && L.space == follower::kProbability) {
    lo = 0.0;
    hi = 1.0;
  } else if (!L.has_support) {
    double mn = INFINITY, mx = -INFINITY;
    for (std::size_t i = threadIdx.x; i < m; i += blockDim.x) {
      const double v = static_cast<double>(x[start + i]);
      mn = fmin(mn, v);
      mx = fmax(mx, v);
    }
    s_min[threadIdx.x] = mn;
    s_max[threadIdx.x] = mx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        s_min[threadIdx.x] = fmin(s_min[threadIdx.x], s_min[threadIdx.x + s]);
        s_max[threadIdx.x] = fmax(s_max[threadIdx.x], s_max[threadIdx.x + s]);
      }
      __syncthreads();
    }
    // DESIGN 1.2: margin-space default support [min xi - 1, max xi + 1], per group.
    lo = s_min[0] - 1.0;
    hi = s_max[0] + 1.0;
  }
  if (threadIdx.x == 0) {
    const std::size_t o = g * std::size_t(L.K);
    ws.lo[g] = lo;
    ws.hi[g] = hi;
    follower::make_pieces(L.space, L.K, lo, hi, ws.a + o, ws.b + o, ws.at_lo + o, ws.order + o);
    follower::radix_init(&ws.state[g]);
    ws.objective[g] = 0.0;
  }
}

template <class T>
__global__ void hist_kernel(const T* x, Launch L, Workspace ws, int pass) {
  const std::size_t g = blockIdx.x / L.blocks_per_group;
  const std::size_t chunk = blockIdx.x % L.blocks_per_group;
  const RadixState state = ws.state[g];
  if (state.done) return;
  std::size_t start, m;
  group_range(L, g, &start, &m);
  const std::size_t begin = chunk * kChunk;
  if (begin >= m) return;
  const std::size_t end = begin + kChunk < m ? begin + kChunk : m;
  __shared__ double s_hist[follower::kRadixBins];
  for (int i = threadIdx.x; i < follower::kRadixBins; i += blockDim.x) s_hist[i] = 0.0;
  __syncthreads();
  const Pieces P = group_pieces(ws, g, L.K);
  for (std::size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double xi = static_cast<double>(x[start + i]);
    const Base base = follower::margin_base(P, xi);
    follower::for_each_item(P, base, xi, L.max_shift, [&](int, double ratio, double cost) {
      const int bin = follower::radix_bin(ratio, pass, state);
      if (bin >= 0) atomicAdd(&s_hist[bin], cost);
    });
  }
  __syncthreads();
  double* hist = ws.hist + g * follower::kRadixBins;
  for (int i = threadIdx.x; i < follower::kRadixBins; i += blockDim.x) {
    if (s_hist[i] != 0.0) atomicAdd(&hist[i], s_hist[i]);
  }
}

__device__ __forceinline__ double group_budget(const Launch& L, std::size_t g) {
  std::size_t start, m;
  group_range(L, g, &start, &m);
  return L.epsilon * static_cast<double>(m);
}

__global__ void choose_kernel(Launch L, Workspace ws, int pass) {
  const std::size_t g = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x;
  if (g >= L.groups) return;
  follower::radix_choose(ws.hist + g * follower::kRadixBins, pass, group_budget(L, g), &ws.state[g]);
}

template <class T>
__global__ void output_kernel(const T* x, Launch L, Workspace ws, T* W, T* D) {
  const std::size_t g = blockIdx.x / L.blocks_per_group;
  const std::size_t chunk = blockIdx.x % L.blocks_per_group;
  std::size_t start, m;
  group_range(L, g, &start, &m);
  const std::size_t begin = chunk * kChunk;
  if (begin >= m) return;
  const std::size_t end = begin + kChunk < m ? begin + kChunk : m;
  const Threshold t = follower::radix_threshold(ws.state[g], group_budget(L, g));
  const Pieces P = group_pieces(ws, g, L.K);
  const std::size_t K = std::size_t(L.K);
  double total = 0.0;
  for (std::size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const std::size_t row = start + i;
    total += follower::margin_output(P, static_cast<double>(x[row]), L.max_shift, t, W + row * K, D + row * K);
  }
  __shared__ double s_sum[kThreads];
  s_sum[threadIdx.x] = total;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) s_sum[threadIdx.x] += s_sum[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(&ws.objective[g], s_sum[0]);
}

__global__ void finish_kernel(Launch L, Workspace ws, double* value, double* dual) {
  const std::size_t g = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x;
  if (g >= L.groups) return;
  std::size_t start, m;
  group_range(L, g, &start, &m);
  value[g] = ws.objective[g] / static_cast<double>(m);
  dual[g] = follower::radix_threshold(ws.state[g], group_budget(L, g)).lambda;
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("sgpo follower_cuda: ") + what + ": " + cudaGetErrorString(err));
  }
}

template <class T>
void launch(const T* x, const Launch& L, const Workspace& ws, T* W, T* D, double* value, double* dual,
            cudaStream_t stream) {
  const unsigned group_blocks = static_cast<unsigned>(L.groups);
  const unsigned work_blocks = static_cast<unsigned>(L.groups * L.blocks_per_group);
  const unsigned per_group_blocks = static_cast<unsigned>((L.groups + kThreads - 1) / kThreads);
  setup_kernel<T><<<group_blocks, kThreads, 0, stream>>>(x, L, ws);
  check(cudaGetLastError(), "setup kernel");
  for (int pass = 0; pass < follower::kRadixPasses; ++pass) {
    check(cudaMemsetAsync(ws.hist, 0, L.groups * follower::kRadixBins * sizeof(double), stream), "memset");
    hist_kernel<T><<<work_blocks, kThreads, 0, stream>>>(x, L, ws, pass);
    check(cudaGetLastError(), "histogram kernel");
    choose_kernel<<<per_group_blocks, kThreads, 0, stream>>>(L, ws, pass);
    check(cudaGetLastError(), "choose kernel");
  }
  output_kernel<T><<<work_blocks, kThreads, 0, stream>>>(x, L, ws, W, D);
  check(cudaGetLastError(), "output kernel");
  finish_kernel<<<per_group_blocks, kThreads, 0, stream>>>(L, ws, value, dual);
  check(cudaGetLastError(), "finish kernel");
}

}  // namespace

std::size_t follower_cuda_workspace_bytes(std::size_t n, std::size_t group_size, int pieces) {
  if (group_size < 1 || pieces < 1) throw std::invalid_argument("group_size and pieces must be >= 1");
  const std::size_t G = (n + group_size - 1) / group_size;
  return layout(nullptr, G, pieces, nullptr);
}

void follower_cuda(std::uintptr_t x, bool is_double, const FollowerArgs& A, std::uintptr_t weights,
                   std::uintptr_t shifts, std::uintptr_t value, std::uintptr_t dual, std::uintptr_t workspace,
                   std::size_t workspace_bytes, std::uintptr_t stream) {
  const std::size_t G = (A.n + A.group_size - 1) / A.group_size;
  Workspace ws;
  const std::size_t need = layout(reinterpret_cast<char*>(workspace), G, A.pieces, &ws);
  if (workspace_bytes < need)
    throw std::invalid_argument("workspace too small: " + std::to_string(workspace_bytes) + " < " +
                                std::to_string(need));
  const std::size_t per_group = A.group_size < A.n ? A.group_size : A.n;
  Launch L{A.n,   A.group_size, G,         (per_group + kChunk - 1) / kChunk,
           A.space, A.pieces,   A.epsilon, A.lo, A.hi, A.max_shift, A.has_support};
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (is_double) {
    launch(reinterpret_cast<const double*>(x), L, ws, reinterpret_cast<double*>(weights),
           reinterpret_cast<double*>(shifts), reinterpret_cast<double*>(value), reinterpret_cast<double*>(dual), s);
  } else {
    launch(reinterpret_cast<const float*>(x), L, ws, reinterpret_cast<float*>(weights),
           reinterpret_cast<float*>(shifts), reinterpret_cast<double*>(value), reinterpret_cast<double*>(dual), s);
  }
}

}  // namespace sgpo
