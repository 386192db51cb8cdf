#include "follower_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "follower.h"

#ifdef SGPO_OPENMP
#include <omp.h>
#endif

namespace sgpo {
namespace {

using follower::Base;
using follower::Pieces;
using follower::Threshold;

struct Item {
  double ratio;
  double cost;
};

// Below this many candidate items a group is gathered whole; above it, a sample brackets lambda* first.
constexpr std::size_t kGatherAll = std::size_t(1) << 15;
constexpr std::size_t kSample = 4096;
// Below this many margin-pieces a parallel region costs more than it saves (on a busy machine, far more).
constexpr std::size_t kParallelWork = std::size_t(1) << 20;

int max_threads() {
#ifdef SGPO_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct GroupPieces {
  std::vector<double> a, b, at_lo;
  std::vector<int> order;
  double lo = 0.0, hi = 1.0;

  void build(int space, int K, double lo_, double hi_) {
    lo = lo_;
    hi = hi_;
    a.resize(K);
    b.resize(K);
    at_lo.resize(K);
    order.resize(K);
    follower::make_pieces(space, K, lo, hi, a.data(), b.data(), at_lo.data(), order.data());
  }
  Pieces view() const { return Pieces{a.data(), b.data(), at_lo.data(), order.data(), static_cast<int>(a.size()), lo}; }
};

template <class T>
void group_support(const T* x, std::size_t m, const FollowerArgs& A, bool parallel, double* lo, double* hi) {
  if (A.has_support) {
    *lo = A.lo;
    *hi = A.hi;
    return;
  }
  if (A.space == follower::kProbability) {
    *lo = 0.0;
    *hi = 1.0;
    return;
  }
  double mn = std::numeric_limits<double>::infinity(), mx = -mn;
#pragma omp parallel for reduction(min : mn) reduction(max : mx) if (parallel)
  for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(m); ++i) {
    const double v = static_cast<double>(x[i]);
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  // DESIGN 1.2: margin-space default support [min xi - 1, max xi + 1], per group (each group its own program).
  *lo = mn - 1.0;
  *hi = mx + 1.0;
}

// Weighted selection of lambda* among explicit items, given the cost `above` of the items already known to
// be taken whole. Three-way quickselect: expected linear time. If the items run out (rounding in the sums),
// `floor` is the threshold: everything gathered is taken, nothing below it.
Threshold select_items(Item* v, std::size_t m, double above, double budget, double floor) {
  Threshold fallback{floor, 1.0};
  std::uint64_t rng = 0x5DEECE66Dull + m;
  std::size_t first = 0, last = m;
  while (first < last) {
    const std::size_t span = last - first;
    double p0 = v[first + splitmix64(rng) % span].ratio;
    double p1 = v[first + splitmix64(rng) % span].ratio;
    double p2 = v[first + splitmix64(rng) % span].ratio;
    const double pivot = std::max(std::min(p0, p1), std::min(std::max(p0, p1), p2));
    Item* gt_end = std::partition(v + first, v + last, [pivot](const Item& it) { return it.ratio > pivot; });
    Item* eq_end = std::partition(gt_end, v + last, [pivot](const Item& it) { return it.ratio == pivot; });
    double w_gt = 0.0, w_eq = 0.0;
    for (Item* it = v + first; it != gt_end; ++it) w_gt += it->cost;
    for (Item* it = gt_end; it != eq_end; ++it) w_eq += it->cost;
    if (above + w_gt > budget) {
      last = static_cast<std::size_t>(gt_end - v);
      fallback = Threshold{pivot, 0.0};
    } else if (above + w_gt + w_eq > budget) {
      return Threshold{pivot, (budget - above - w_gt) / w_eq};
    } else {
      above += w_gt + w_eq;
      first = static_cast<std::size_t>(eq_end - v);
    }
  }
  return fallback;
}

template <class T>
void gather(const T* x, std::size_t m, const Pieces& P, double max_shift, std::vector<Item>& out) {
  out.clear();
  for (std::size_t i = 0; i < m; ++i) {
    const double xi = static_cast<double>(x[i]);
    const Base base = follower::margin_base(P, xi);
    follower::for_each_item(P, base, xi, max_shift,
                            [&](int, double ratio, double cost) { out.push_back(Item{ratio, cost}); });
  }
}

// One large group: a random sample of margins estimates where the budget runs out, one parallel pass
// checks the bracket [lam_lo, lam_hi] around that estimate and gathers only the items inside it (a few
// percent), and quickselect finishes exactly. A missed bracket (unlikely) falls back to gathering all.
template <class T>
Threshold select_large(const T* x, std::size_t m, const Pieces& P, double max_shift, double budget,
                       bool parallel) {
  const std::size_t S = std::max(kSample, static_cast<std::size_t>(std::pow(double(m), 2.0 / 3.0)));
  std::vector<Item> sample;
  sample.reserve(S * 2);
  std::uint64_t rng = 0x243F6A8885A308D3ull ^ m;
  for (std::size_t s = 0; s < S; ++s) {
    const double xi = static_cast<double>(x[splitmix64(rng) % m]);
    const Base base = follower::margin_base(P, xi);
    follower::for_each_item(P, base, xi, max_shift,
                            [&](int, double ratio, double cost) { sample.push_back(Item{ratio, cost}); });
  }
  std::sort(sample.begin(), sample.end(), [](const Item& l, const Item& r) { return l.ratio > r.ratio; });
  const double scale = double(m) / double(S);
  std::size_t p = 0;
  for (double cum = 0.0; p < sample.size(); ++p) {
    cum += sample[p].cost * scale;
    if (cum > budget) break;
  }
  const std::size_t delta = static_cast<std::size_t>(3.0 * std::sqrt(double(sample.size()))) + 16;
  const double inf = std::numeric_limits<double>::infinity();
  double lam_hi = p >= delta ? sample[p - delta].ratio : inf;
  double lam_lo = p + delta < sample.size() ? sample[p + delta].ratio : 0.0;

  for (int attempt = 0; attempt < 2; ++attempt) {
    const int nt = max_threads();
    std::vector<std::vector<Item>> local(nt);
    double above = 0.0, inside = 0.0;
#pragma omp parallel reduction(+ : above, inside) if (parallel)
    {
#ifdef SGPO_OPENMP
      std::vector<Item>& mine = local[omp_get_thread_num()];
#else
      std::vector<Item>& mine = local[0];
#endif
#pragma omp for schedule(static)
      for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(m); ++i) {
        const double xi = static_cast<double>(x[i]);
        const Base base = follower::margin_base(P, xi);
        follower::for_each_item(P, base, xi, max_shift, [&](int, double ratio, double cost) {
          if (ratio > lam_hi) {
            above += cost;
          } else if (ratio >= lam_lo) {
            inside += cost;
            mine.push_back(Item{ratio, cost});
          }
        });
      }
    }
    if (above <= budget && (lam_lo == 0.0 || above + inside > budget)) {
      std::vector<Item> items;
      std::size_t total = 0;
      for (const auto& l : local) total += l.size();
      items.reserve(total);
      for (const auto& l : local) items.insert(items.end(), l.begin(), l.end());
      return select_items(items.data(), items.size(), above, budget, lam_lo);
    }
    lam_hi = inf;
    lam_lo = 0.0;
  }
  throw std::logic_error("sgpo follower: the full bracket cannot miss");
}

template <class T>
Threshold select_radix(const T* x, std::size_t m, const Pieces& P, double max_shift, double budget) {
  follower::RadixState state;
  follower::radix_init(&state);
  double hist[follower::kRadixBins];
  for (int pass = 0; pass < follower::kRadixPasses && !state.done; ++pass) {
    std::fill(hist, hist + follower::kRadixBins, 0.0);
    for (std::size_t i = 0; i < m; ++i) {
      const double xi = static_cast<double>(x[i]);
      const Base base = follower::margin_base(P, xi);
      follower::for_each_item(P, base, xi, max_shift, [&](int, double ratio, double cost) {
        const int bin = follower::radix_bin(ratio, pass, state);
        if (bin >= 0) hist[bin] += cost;
      });
    }
    follower::radix_choose(hist, pass, budget, &state);
  }
  return follower::radix_threshold(state, budget);
}

template <class T>
double output_group(const T* x, std::size_t m, const Pieces& P, double max_shift, const Threshold& t, T* W, T* D,
                    bool parallel) {
  const std::size_t K = static_cast<std::size_t>(P.K);
  double total = 0.0;
#pragma omp parallel for reduction(+ : total) schedule(static) if (parallel)
  for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(m); ++i) {
    total += follower::margin_output(P, static_cast<double>(x[i]), max_shift, t, W + i * K, D + i * K);
  }
  return total;
}

template <class T>
void solve_group(const T* x, std::size_t m, const FollowerArgs& A, bool parallel, GroupPieces& gp,
                 std::vector<Item>& buf, T* W, T* D, double* value, double* dual) {
  double lo, hi;
  group_support(x, m, A, parallel, &lo, &hi);
  gp.build(A.space, A.pieces, lo, hi);
  const Pieces P = gp.view();
  const double budget = A.epsilon * double(m);
  Threshold t;
  if (A.strategy == Strategy::kRadix) {
    t = select_radix(x, m, P, A.max_shift, budget);
  } else if (m * std::size_t(A.pieces) > kGatherAll && m > 4 * kSample) {
    t = select_large(x, m, P, A.max_shift, budget, parallel);
  } else {
    gather(x, m, P, A.max_shift, buf);
    t = select_items(buf.data(), buf.size(), 0.0, budget, 0.0);
  }
  *value = output_group(x, m, P, A.max_shift, t, W, D, parallel) / double(m);
  *dual = t.lambda;
}

}  // namespace

template <class T>
void follower_cpu(const T* x, const FollowerArgs& A, T* W, T* D, double* value, double* dual) {
  if (A.n == 0 || A.group_size == 0 || A.pieces < 1) throw std::invalid_argument("sgpo follower: empty problem");
  const std::size_t G = (A.n + A.group_size - 1) / A.group_size;
  const std::size_t K = static_cast<std::size_t>(A.pieces);
  const int nt = max_threads();
  const bool parallel = nt > 1 && A.n * K >= kParallelWork;
  if (parallel && G >= 2 * static_cast<std::size_t>(nt)) {
#pragma omp parallel
    {
      GroupPieces gp;
      std::vector<Item> buf;
#pragma omp for schedule(dynamic, 8)
      for (std::ptrdiff_t g = 0; g < static_cast<std::ptrdiff_t>(G); ++g) {
        const std::size_t start = std::size_t(g) * A.group_size;
        const std::size_t m = std::min(A.group_size, A.n - start);
        solve_group(x + start, m, A, false, gp, buf, W + start * K, D + start * K, value + g, dual + g);
      }
    }
  } else {
    GroupPieces gp;
    std::vector<Item> buf;
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t start = g * A.group_size;
      const std::size_t m = std::min(A.group_size, A.n - start);
      solve_group(x + start, m, A, parallel && m * K >= kParallelWork, gp, buf, W + start * K, D + start * K,
                  value + g, dual + g);
    }
  }
}

template void follower_cpu<float>(const float*, const FollowerArgs&, float*, float*, double*, double*);
template void follower_cpu<double>(const double*, const FollowerArgs&, double*, double*, double*, double*);

}  // namespace sgpo
