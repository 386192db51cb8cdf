// The exact SSAPO follower (DESIGN 1.2, paper Thm 3.3): the math shared by the CPU and CUDA paths.
//
// For a multiplier lambda >= 0 on the budget sum_ik |q_ik| <= n * epsilon, each margin's problem is a
// water-filling of its unit mass over the pieces: piece k offers a first segment of mass min(1, M/d) at
// position lo worth l_k(lo) - lambda * d per unit (d = xi - lo, M = max_shift) and then unlimited mass at xi
// worth l_k(xi). The best unlimited segment is L(xi) = max_k l_k(xi), so moving a slice of mass to lo on piece
// k is worth (l_k(lo) - L(xi)) / d per unit of budget. Every margin therefore offers a few "items" (cost in
// budget units, gain per unit) and the whole group is a fractional knapsack: take items by decreasing ratio
// until the budget is spent. The optimal lambda is the ratio of the item that is only partly taken; items
// with exactly that ratio share the rest of the budget in the same proportion theta, so the budget binds.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define SGPO_HD __host__ __device__ __forceinline__
#else
#define SGPO_HD inline
#endif

namespace sgpo {
namespace follower {

enum Space : int { kProbability = 0, kMargin = 1 };

// Radix selection on the bits of the (positive) ratios: 8 passes of 8 bits each.
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int kRadixPasses = 64 / kRadixBits;

// Rounded operations that the compiler may not fuse into FMAs: an item's ratio must come out bit-identical
// wherever it is recomputed (selection passes, primal recovery, host and device), or ties at lambda* split.
SGPO_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
SGPO_HD double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
SGPO_HD double sub_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
SGPO_HD double div_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

SGPO_HD std::uint64_t double_bits(double v) {
#ifdef __CUDA_ARCH__
  return static_cast<std::uint64_t>(__double_as_longlong(v));
#else
  std::uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
#endif
}
SGPO_HD double bits_double(std::uint64_t u) {
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(u));
#else
  double v;
  std::memcpy(&v, &u, sizeof v);
  return v;
#endif
}

// -log(sigmoid(t)) without overflow for large |t|.
SGPO_HD double neg_log_sigmoid(double t) { return t >= 0.0 ? log1p(exp(-t)) : -t + log1p(exp(t)); }
SGPO_HD double sigmoid(double t) {
  if (t >= 0.0) return 1.0 / (1.0 + exp(-t));
  const double e = exp(t);
  return e / (1.0 + e);
}

// Piece k (0-based) of the loss, l_k(x) = a x + b (DESIGN 1.2):
//   probability space: tangent of -log x at x = (k+1)/K;
//   margin space: tangent of -log sigmoid at knot k of numpy.linspace(lo, hi, K).
SGPO_HD void piece(int space, int K, int k, double lo, double hi, double* a, double* b) {
  if (space == kProbability) {
    const double x0 = static_cast<double>(k + 1) / static_cast<double>(K);
    *a = -1.0 / x0;
    *b = 1.0 - log(x0);
  } else {
    double t = lo;
    if (K > 1) t = (k == K - 1) ? hi : lo + static_cast<double>(k) * ((hi - lo) / static_cast<double>(K - 1));
    const double s = sigmoid(-t);
    *a = -s;
    *b = neg_log_sigmoid(t) + s * t;
  }
}

SGPO_HD double line(double a, double b, double x) { return add_rn(mul_rn(a, x), b); }

// One group's pieces: a, b (K each), l_k(lo) and the piece order by decreasing l_k(lo), which is the order
// of every margin's item ratios in this group (the ratios share L(xi) and d).
struct Pieces {
  const double* a;
  const double* b;
  const double* at_lo;
  const int* order;
  int K;
  double lo;
};

// Fills a, b, at_lo, order (K entries each) for a group with support [lo, hi].
SGPO_HD void make_pieces(int space, int K, double lo, double hi, double* a, double* b, double* at_lo,
                         int* order) {
  for (int k = 0; k < K; ++k) {
    piece(space, K, k, lo, hi, &a[k], &b[k]);
    at_lo[k] = line(a[k], b[k], lo);
  }
  // Insertion sort, stable: K is small and this runs once per group.
  for (int k = 0; k < K; ++k) {
    int j = k;
    while (j > 0 && at_lo[order[j - 1]] < at_lo[k]) {
      order[j] = order[j - 1];
      --j;
    }
    order[j] = k;
  }
}

// L(xi) = max_k l_k(xi) and its first maximiser: where the margin's unmoved mass sits.
struct Base {
  double L;
  int kstar;
};

SGPO_HD Base margin_base(const Pieces& P, double x) {
  Base r{line(P.a[0], P.b[0], x), 0};
  for (int k = 1; k < P.K; ++k) {
    const double v = line(P.a[k], P.b[k], x);
    if (v > r.L) {
      r.L = v;
      r.kstar = k;
    }
  }
  return r;
}

// Calls f(k, ratio, cost) for each item of margin x, in decreasing ratio (up to rounding): a slice of mass moved to lo on
// piece k, costing `cost` budget units (its mass is cost / d) and gaining `ratio` per unit of budget. Only
// items with a positive gain and positive cost exist; max_shift = +inf means no per-entry cap.
template <class F>
SGPO_HD void for_each_item(const Pieces& P, const Base& base, double x, double max_shift, F&& f) {
  const double d = sub_rn(x, P.lo);
  if (!(d > 0.0) || !(max_shift > 0.0)) return;
  const double inv_d = div_rn(1.0, d);
  double used = 0.0;
  for (int j = 0; j < P.K && used < d; ++j) {
    const int k = P.order[j];
    // (l_k(lo) - L(xi)) / d written as -a_k - (L(xi) - l_k(xi)) / d: exact (-a_k) for the margin's own piece,
    // so margins that are mathematically tied are tied in floating point too and share theta evenly.
    const double gap = sub_rn(base.L, line(P.a[k], P.b[k], x));
    const double ratio = sub_rn(-P.a[k], mul_rn(gap, inv_d));
    if (!(ratio > 0.0)) return;
    const double left = sub_rn(d, used);
    const double cost = max_shift < left ? max_shift : left;
    f(k, ratio, cost);
    used = add_rn(used, cost);
  }
}

// The selected threshold: items with ratio > lambda are taken whole, items with ratio == lambda take the
// fraction theta, the rest nothing. "Everything taken" is lambda = 0 (all item ratios are positive).
struct Threshold {
  double lambda;
  double theta;
};

SGPO_HD double taken_fraction(double ratio, const Threshold& t) {
  if (ratio > t.lambda) return 1.0;
  if (ratio == t.lambda) return t.theta;
  return 0.0;
}

// Primal recovery for one margin: writes its K weights s_k and displacements D_k = q_k / s_k, returns its
// contribution to the group's objective times n (L(xi) plus the gain of the taken items).
template <class T>
SGPO_HD double margin_output(const Pieces& P, double x, double max_shift, const Threshold& t, T* w_row,
                             T* d_row) {
  const Base base = margin_base(P, x);
  const double d = x - P.lo;
  for (int k = 0; k < P.K; ++k) {
    w_row[k] = T(0);
    d_row[k] = T(0);
  }
  double moved = 0.0, gain = 0.0, star_mass = 0.0, star_shift = 0.0;
  for_each_item(P, base, x, max_shift, [&](int k, double ratio, double cost) {
    const double frac = taken_fraction(ratio, t);
    if (frac <= 0.0) return;
    const double q = frac * cost;
    const double mass = q / d;
    moved += mass;
    gain += ratio * q;
    if (k == base.kstar) {
      star_mass = mass;
      star_shift = q;
    } else {
      w_row[k] = T(mass);
      d_row[k] = T(d);  // this slice sits at lo: q / s = d
    }
  });
  const double rest = moved < 1.0 ? 1.0 - moved : 0.0;
  star_mass += rest;
  w_row[base.kstar] = T(star_mass);
  d_row[base.kstar] = star_mass > 0.0 ? T(star_shift / star_mass) : T(0);
  return base.L + gain;
}

// ---- radix selection of lambda (the CUDA path; the CPU runs it too so the tests cover it) ----
// Positive doubles order like their bit patterns, so lambda* is found digit by digit from the top: at each
// pass, a weighted histogram of the costs of the items still matching the chosen prefix, then a scan from
// the largest digit down to the first bin where the budget runs out.
struct RadixState {
  std::uint64_t prefix;  // the digits chosen so far, right-aligned
  double above;          // total cost of items with a ratio above the prefix's range (all taken)
  double tied;           // after the last pass: total cost of the items whose ratio equals lambda*
  int done;              // 1: the budget covers every item, lambda* = 0
};

SGPO_HD void radix_init(RadixState* s) {
  s->prefix = 0;
  s->above = 0.0;
  s->tied = 0.0;
  s->done = 0;
}

// Bin of an item's ratio at this pass, or -1 when it does not match the prefix chosen so far.
SGPO_HD int radix_bin(double ratio, int pass, const RadixState& s) {
  const std::uint64_t key = double_bits(ratio);
  const int shift = 64 - kRadixBits * (pass + 1);
  if (pass > 0 && (key >> (shift + kRadixBits)) != s.prefix) return -1;
  return static_cast<int>((key >> shift) & (kRadixBins - 1));
}

SGPO_HD void radix_choose(const double* hist, int pass, double budget, RadixState* s) {
  if (s->done) return;
  int chosen = -1, lowest = -1;
  double above = s->above;
  for (int bin = kRadixBins - 1; bin >= 0; --bin) {
    if (hist[bin] <= 0.0) continue;
    if (above + hist[bin] > budget) {
      chosen = bin;
      break;
    }
    above += hist[bin];
    lowest = bin;
  }
  if (chosen < 0) {
    if (pass == 0) {
      s->done = 1;
      return;
    }
    // Only rounding in the sums can get here: the prefix's range held the crossing one pass ago, so
    // lambda* lies in its lowest non-empty bin and that bin's items get what is left of the budget.
    chosen = lowest;
    above -= hist[lowest];
  }
  s->prefix = (s->prefix << kRadixBits) | static_cast<std::uint64_t>(chosen);
  s->above = above;
  s->tied = hist[chosen];
}

SGPO_HD Threshold radix_threshold(const RadixState& s, double budget) {
  if (s.done) return Threshold{0.0, 1.0};
  double theta = s.tied > 0.0 ? (budget - s.above) / s.tied : 0.0;
  theta = theta < 0.0 ? 0.0 : (theta > 1.0 ? 1.0 : theta);
  return Threshold{bits_double(s.prefix), theta};
}

}  // namespace follower
}  // namespace sgpo
