// Native CPU projection kernel for steer.kernels (backend "native"); bound to Python in project.cpp.
// No torch headers here: compiled with them, the same loops ran about 2x slower (measured).
//
// y <- (x - s B (B^T x)) * factor for x, y [d, m] views (y may be x), float32 or bfloat16 storage,
// float32 maths, B [d, k] float32. Each vector (a column of the [d, m] view) is one residual-space
// vector. Two layouts, chosen by strides:
//   columns contiguous (stride(0) == 1): a group of 1, 2 or 4 vectors at a time, dotted (from
//     memory), then updated and stored (from L1): one read and one write of the weight.
//   rows contiguous (stride(1) == 1): chunks of columns; pass 1 streams the rows accumulating
//     c = B^T x (and ||x||^2) in L2, pass 2 streams them again and writes the update.
// Deterministic by construction: no threads, no reassociation (the contiguous dot products keep 16
// fixed partial sums reduced in a fixed order), and multiply-adds are either explicit std::fma
// (exactly rounded by definition) or, in the contiguous dot products (where gcc vectorizes only
// the unfused form), a multiply then an add: built with -ffp-contract=off so the compiler fuses
// nothing itself. So the bytes do not depend on the vector ISA the compiler picked. bf16 rounding
// is round-to-nearest-even, as torch's float -> bfloat16 conversion; NaN is stored as 0x7FC0
// (rounding would carry some NaNs to infinity).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <algorithm>
#include <type_traits>
#include "project.h"

namespace {

constexpr int64_t LANES = 16;
constexpr int64_t CW_FLOATS = 32768;  // row layout: partial sums per chunk (128 KiB, L2; measured faster than L1-sized)

inline float load(const float* p) { return *p; }
inline float load(const uint16_t* p) {
  uint32_t u = static_cast<uint32_t>(*p) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(float* p, float v) { *p = v; }
// Round to nearest even. Without NaN inputs the formula is exact for every value (Inf stays Inf,
// overflow rounds to Inf); a NaN could carry into the sign bit, so `store` tests for it.
inline void store_finite(float* p, float v) { *p = v; }
inline void store_finite(uint16_t* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  *p = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline void store(uint16_t* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  *p = static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : r);  // NaN: integer test, vectorizes
}

// ||w|| / ||w - s B c|| from sq = ||w||^2, c (k values, stride cs), gram [k, k]; as kernels._norm_factor.
inline float norm_factor(float sq, const float* c, int64_t cs, const float* gram, int64_t k, float s) {
  float cc = 0.f, cgc = 0.f;
  for (int64_t a = 0; a < k; ++a) {
    float gc = 0.f;
    for (int64_t b = 0; b < k; ++b) gc += gram[a * k + b] * c[b * cs];
    cc += c[a * cs] * c[a * cs];
    cgc += c[a * cs] * gc;
  }
  float new_sq = sq - 2.f * s * cc + s * s * cgc;
  if (new_sq < 0.f) new_sq = 0.f;
  float den = std::sqrt(new_sq);
  return std::sqrt(sq) / (den > 1e-12f ? den : 1e-12f);
}

inline bool all_finite(const float* v, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(v[i]);
  return ok;
}

// In every function below, KC > 0 is the subspace size known at compile time (loops over it
// unroll; the common k = 1..4) and KC = 0 reads it from k; both do the same operations in the same
// order, so they round identically. P: norm preservation.

template <typename T, bool F>
inline void put(T* p, float v) {
  if (F)
    store_finite(p, v);
  else
    store(p, v);
}

// Pass 2. Rows layout, NR (1 or 2) rows at once so they share the loads of c: y_r[j] = (x_r[j] -
// s u_r[j]) * fac[j] with u_r[j] = sum_a b_r[a] c[a * cw + j] summed in order a = 0, 1, ... Columns
// layout, NV (1, 2 or 4) vectors at once so they share the loads of B^T: y_v[i] = (x_v[i] - s u_v[i]) *
// f_v with u_v[i] = sum_a bt[a * d + i] c_v[a]. IP (in place): x is not read (pass nullptr); y is
// read and written through one pointer. Otherwise x and y do not
// overlap (the Problem contract). Either way no two restrict pointers touch the same memory, so
// gcc vectorizes over j without alias checks or a staging copy. F: the caller checked that no NaN
// can arise (every coefficient finite implies every x finite: a NaN or Inf in x makes its
// vector's coefficients NaN or Inf), so the cheaper rounding is exact.
template <typename T, int KC, bool P, bool F, bool IP, int NR>
inline void row_update(const T* __restrict x0, const T* __restrict x1, T* __restrict y0, T* __restrict y1, int64_t w,
                       const float* __restrict b0, const float* __restrict b1, int64_t k, const float* __restrict c,
                       int64_t cw, const float* __restrict fac, float s) {
  const int64_t K = KC > 0 ? KC : k;
  for (int64_t j = 0; j < w; ++j) {
    float u0 = b0[0] * c[j];
    float u1 = NR > 1 ? b1[0] * c[j] : 0.f;
    for (int64_t a = 1; a < K; ++a) {
      const float ca = c[a * cw + j];
      u0 = std::fma(b0[a], ca, u0);
      if (NR > 1) u1 = std::fma(b1[a], ca, u1);
    }
    const float v0 = std::fma(-s, u0, load((IP ? y0 : x0) + j));
    put<T, F>(y0 + j, P ? v0 * fac[j] : v0);
    if (NR > 1) {
      const float v1 = std::fma(-s, u1, load((IP ? y1 : x1) + j));
      put<T, F>(y1 + j, P ? v1 * fac[j] : v1);
    }
  }
}

template <typename T, int KC, bool P, bool F, bool IP, int NV>
inline void vector_update(const T* __restrict x0, const T* __restrict x1, const T* __restrict x2,
                          const T* __restrict x3, T* __restrict y0, T* __restrict y1, T* __restrict y2,
                          T* __restrict y3, int64_t n, const float* __restrict bt, int64_t d, int64_t k,
                          const float* __restrict c, const float* __restrict f, float s) {
  // c: NV rows of K coefficients (vector v's at c[v * K]); f: NV norm factors
  const int64_t K = KC > 0 ? KC : k;
  const T* xs[4] = {x0, x1, x2, x3};
  T* ys[4] = {y0, y1, y2, y3};
  for (int64_t i = 0; i < n; ++i) {
    float u[NV];
    for (int v = 0; v < NV; ++v) u[v] = bt[i] * c[v * K];
    for (int64_t a = 1; a < K; ++a) {
      const float ba = bt[a * d + i];
      for (int v = 0; v < NV; ++v) u[v] = std::fma(ba, c[v * K + a], u[v]);
    }
    for (int v = 0; v < NV; ++v) {
      const float w = std::fma(-s, u[v], load((IP ? ys[v] : xs[v]) + i));
      put<T, F>(ys[v] + i, P ? w * f[v] : w);
    }
  }
}

// Calls fn(std::integral_constant<bool, F>, std::integral_constant<bool, IP>): the four pass-2
// variants as compile-time flags.
template <typename Fn>
inline void with_flags(bool finite, bool in_place, Fn fn) {
  using T_ = std::true_type;
  using F_ = std::false_type;
  if (finite)
    in_place ? fn(T_{}, T_{}) : fn(T_{}, F_{});
  else
    in_place ? fn(F_{}, T_{}) : fn(F_{}, F_{});
}

// c[v * KC + a] = sum_i bt[a * d + i] x_v[i] for a < KC and (P) sq[v] = sum_i x_v[i]^2, for the NV
// vectors x_v (v < NV, at x + v * sm), each accumulated in LANES partial sums (lane i % LANES, in
// order of i) that are then added in lane order. Local arrays, so the partial sums live in
// registers; the NV vectors share each load of bt, and each vector's sums are the same for any NV.
template <typename T, int KC, bool P, int NV>
inline void dots(const T* __restrict x, int64_t sm, const float* __restrict bt, int64_t d, float* __restrict c,
                 float* __restrict sq) {
  float acc[NV][KC > 0 ? KC : 1][LANES] = {};
  float sqacc[NV][LANES] = {};
  const int64_t body = d - d % LANES;
  for (int64_t i = 0; i < body; i += LANES) {  // innermost loops over the LANES: one vector op each
    float v[NV][LANES];
    for (int n = 0; n < NV; ++n)
      for (int64_t l = 0; l < LANES; ++l) v[n][l] = load(x + n * sm + i + l);
    for (int64_t a = 0; a < KC; ++a)
      for (int n = 0; n < NV; ++n)
        for (int64_t l = 0; l < LANES; ++l) acc[n][a][l] += bt[a * d + i + l] * v[n][l];
    if (P)
      for (int n = 0; n < NV; ++n)
        for (int64_t l = 0; l < LANES; ++l) sqacc[n][l] += v[n][l] * v[n][l];
  }
  for (int n = 0; n < NV; ++n) {
    for (int64_t i = body; i < d; ++i) {
      const float v = load(x + n * sm + i);
      for (int64_t a = 0; a < KC; ++a) acc[n][a][i - body] += bt[a * d + i] * v;
      if (P) sqacc[n][i - body] += v * v;
    }
    for (int64_t a = 0; a < KC; ++a) {
      float t = 0.f;
      for (int64_t l = 0; l < LANES; ++l) t += acc[n][a][l];
      c[n * KC + a] = t;
    }
    if (P) {
      float t = 0.f;
      for (int64_t l = 0; l < LANES; ++l) t += sqacc[n][l];
      sq[n] = t;
    }
  }
}

// NV consecutive vectors (x + v * sm, y + v * ysm): pass 1 (memory) c = B^T x and ||x||^2, pass 2
// (cache) y = (x - s B c) * f, the vectors sharing the loads of B^T. c holds NV * K floats.
template <typename T, int KC, bool P, int NV>
inline void column_group(const T* x, T* y, int64_t d, int64_t sm, int64_t ysm, const float* bt, int64_t k,
                         const float* gram, float s, float* c) {
  const int64_t K = KC > 0 ? KC : k;
  float sq[NV] = {}, f[NV];
  if (KC > 0) {
    dots<T, (KC > 0 ? KC : 1), P, NV>(x, sm, bt, d, c, sq);
  } else {  // one vector and one direction at a time (x stays in L1): each sum sees the same additions
    for (int64_t a = 0; a < K; ++a) dots<T, 1, false, 1>(x, sm, bt + a * d, d, c + a, nullptr);
    if (P) dots<T, 0, true, 1>(x, sm, nullptr, d, nullptr, sq);
  }
  bool finite = all_finite(c, NV * K);
  for (int v = 0; v < NV; ++v) {
    f[v] = P ? norm_factor(sq[v], c + v * K, 1, gram, K, s) : 1.f;
    finite &= std::isfinite(f[v]);
  }
  const T* xv[4];
  T* yv[4];
  for (int v = 0; v < 4; ++v) {  // unused slots repeat the last vector; NV decides what is touched
    xv[v] = x + std::min(v, NV - 1) * sm;
    yv[v] = y + std::min(v, NV - 1) * ysm;
  }
  with_flags(finite, x == y, [&](auto F, auto IP) {
    constexpr bool ip = IP.value;
    vector_update<T, KC, P, F.value, ip, NV>(ip ? nullptr : xv[0], ip ? nullptr : xv[1], ip ? nullptr : xv[2],
                                             ip ? nullptr : xv[3], yv[0], yv[1], yv[2], yv[3], d, bt, d, K, c, f, s);
  });
}

// Columns contiguous: vector j is x[j * sm + i], i < d; bt is B^T [k, d]. Vectors in groups, each
// vector's arithmetic the same whatever the group; sizes measured (results/kernels): 4 for bf16
// with k >= 2 in place; 2 for k >= 2 or bf16 otherwise (out of place, 4 groups ran at a quarter of
// copy speed: 8 streams a multiple of 4 KiB apart); 1 for float32 with k = 1 (copy speed alone,
// slower in pairs) and for k > 4.
template <typename T, int KC, bool P>
void columns(const T* x, T* y, int64_t d, int64_t m, int64_t sm, int64_t ysm, const float* bt, int64_t k,
             const float* gram, float s) {
  constexpr bool bf16 = std::is_same<T, uint16_t>::value;
  constexpr int G2 = KC == 0 ? 1 : (KC > 1 || bf16) ? 2 : 1;
  std::vector<float> c(4 * (KC > 0 ? KC : k));
  int64_t j = 0;
  if (bf16 && KC > 1 && x == y)
    for (; j + 4 <= m; j += 4) column_group<T, KC, P, 4>(x + j * sm, y + j * ysm, d, sm, ysm, bt, k, gram, s, c.data());
  for (; j + G2 <= m; j += G2) column_group<T, KC, P, G2>(x + j * sm, y + j * ysm, d, sm, ysm, bt, k, gram, s, c.data());
  for (; j < m; ++j) column_group<T, KC, P, 1>(x + j * sm, y + j * ysm, d, sm, ysm, bt, k, gram, s, c.data());
}

// Pass 1 of the rows layout for NR (1 or 4) consecutive rows x0.. (bi: their NR x k weights):
// c[a * cw + j] += bi[r * k + a] x_r[j] for r = 0.. in order, and (P) sq[j] += x_r[j]^2. Restrict
// pointers and a compile-time k let the compiler vectorize over j, each partial sum loaded and
// stored once per NR rows.
template <typename T, int KC, bool P, int NR>
inline void accumulate(const T* __restrict x0, const T* __restrict x1, const T* __restrict x2, const T* __restrict x3,
                       const float* __restrict bi, int64_t k, float* __restrict c, int64_t cw, float* __restrict sq,
                       int64_t w) {
  const int64_t K = KC > 0 ? KC : k;
  for (int64_t j = 0; j < w; ++j) {
    const float v0 = load(x0 + j);
    const float v1 = NR > 1 ? load(x1 + j) : 0.f, v2 = NR > 1 ? load(x2 + j) : 0.f, v3 = NR > 1 ? load(x3 + j) : 0.f;
    for (int64_t a = 0; a < K; ++a) {
      float t = c[a * cw + j];
      t = std::fma(bi[a], v0, t);
      if (NR > 1) {
        t = std::fma(bi[K + a], v1, t);
        t = std::fma(bi[2 * K + a], v2, t);
        t = std::fma(bi[3 * K + a], v3, t);
      }
      c[a * cw + j] = t;
    }
    if (P) {
      float t = sq[j];
      t = std::fma(v0, v0, t);
      if (NR > 1) {
        t = std::fma(v1, v1, t);
        t = std::fma(v2, v2, t);
        t = std::fma(v3, v3, t);
      }
      sq[j] = t;
    }
  }
}

// Rows contiguous: row i is x[i * sd + j], j < m; vectors are columns; b is B [d, k].
template <typename T, int KC, bool P>
void rows(const T* x, T* y, int64_t d, int64_t m, int64_t sd, int64_t ysd, const float* b, int64_t k,
          const float* gram, float s) {
  constexpr int64_t R = 4;  // rows per step of pass 1: each partial sum is loaded and stored once per R rows
  const int64_t K = KC > 0 ? KC : k;
  const int64_t cw = std::max<int64_t>(512, CW_FLOATS / K);  // K partial-sum rows of cw floats
  std::vector<float> c(K * cw), sq(cw), fac(cw);
  for (int64_t j0 = 0; j0 < m; j0 += cw) {
    const int64_t w = std::min(cw, m - j0);
    std::fill(c.begin(), c.end(), 0.f);
    std::fill(sq.begin(), sq.end(), 0.f);
    // pass 1: c[a][j] += B[i][a] x[i][j] for i = 0, 1, ... in order (R rows per step: same order)
    int64_t i = 0;
    for (; i + R <= d; i += R) {
      const T* x0 = x + i * sd + j0;
      accumulate<T, KC, P, R>(x0, x0 + sd, x0 + 2 * sd, x0 + 3 * sd, b + i * K, K, c.data(), cw, sq.data(), w);
    }
    for (; i < d; ++i) {
      const T* xr = x + i * sd + j0;
      accumulate<T, KC, P, 1>(xr, xr, xr, xr, b + i * K, K, c.data(), cw, sq.data(), w);
    }
    if (P)
      for (int64_t j = 0; j < w; ++j) fac[j] = norm_factor(sq[j], c.data() + j, cw, gram, K, s);
    const bool finite = all_finite(c.data(), K * cw) && (!P || all_finite(fac.data(), w));
    // pass 2: y = (x - s B c) * factor, two rows at a time (sharing the loads of c), then the odd one
    with_flags(finite, x == y, [&](auto F, auto IP) {
      constexpr bool ip = IP.value;
      int64_t r = 0;
      for (; r + 2 <= d; r += 2) {
        const T* x0 = ip ? nullptr : x + r * sd + j0;
        T* y0 = y + r * ysd + j0;
        row_update<T, KC, P, F.value, ip, 2>(x0, ip ? nullptr : x0 + sd, y0, y0 + ysd, w, b + r * K, b + (r + 1) * K, K,
                                             c.data(), cw, fac.data(), s);
      }
      if (r < d)
        row_update<T, KC, P, F.value, ip, 1>(ip ? nullptr : x + r * sd + j0, nullptr, y + r * ysd + j0, nullptr, w,
                                             b + r * K, nullptr, K, c.data(), cw, fac.data(), s);
    });
  }
}

template <typename T, int KC, bool P>
__attribute__((flatten)) void run(const Problem& q) {
  const T* xp = static_cast<const T*>(q.x);
  T* yp = static_cast<T*>(q.y);
  if (q.columns)
    columns<T, KC, P>(xp, yp, q.d, q.m, q.sx, q.sy, q.bt, q.k, q.gram, q.s);
  else
    rows<T, KC, P>(xp, yp, q.d, q.m, q.sx, q.sy, q.b, q.k, q.gram, q.s);
}

template <typename T, bool P>
void by_k(const Problem& q) {
  switch (q.k) {
    case 1: return run<T, 1, P>(q);
    case 2: return run<T, 2, P>(q);
    case 3: return run<T, 3, P>(q);
    case 4: return run<T, 4, P>(q);
    default: return run<T, 0, P>(q);
  }
}

template <typename T>
void dispatch(const Problem& q) {
  if (q.gram != nullptr)
    by_k<T, true>(q);
  else
    by_k<T, false>(q);
}

}  // namespace

void steer_project(const Problem& q) {
  if (q.bf16)
    dispatch<uint16_t>(q);
  else
    dispatch<float>(q);
}

