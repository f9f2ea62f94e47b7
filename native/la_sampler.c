/* Native Linear Alignment sampler, bit-exact mirror of la_edge/decoding/sampling.py.
 * Shaped like llama.cpp's sampler chain: each stage rewrites one candidates array {id, value}.
 * Build with -ffp-contract=off: every float op must round exactly like NumPy's. */
#include "la_sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LA_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LA_CLONES
#endif

/* An AVX2 path chosen at run time (never FMA: contraction would change bits), else portable C. */
#if defined(__GNUC__) && defined(__x86_64__)
#define LA_AVX2 1
#define LA_AVX2_FN __attribute__((target("avx2")))
#define VW 8 /* vectors of 4 doubles in flight; a multiple of LANES / 4 */
#include <immintrin.h>
static int la_avx2(void) {
  static int has = -1; /* a benign race: every thread stores the same value */
  if (has < 0) {
    __builtin_cpu_init();
    has = __builtin_cpu_supports("avx2") != 0;
  }
  return has;
}
#else
#define LA_AVX2 0
#endif

#define LOG2E 0x1.71547652b82fep+0
#define SHIFT (0x1.8p52 + 2048.0) /* y + SHIFT rounds y to n; its low bits hold n + 2048 */
#define Y_MIN (-1100.0)
#define MASS_CHUNK 8192
#define LANES 16
#define LN2_HI 0x1.62e42fee00000p-1
#define LN2_LO 0x1.a39ef35793c76p-33
#define SMALL_SORT 16
#define HEAD_START 64

static const double POLY[12] = {
    0x1.0000000000000p+0, 0x1.62e42fefa39efp-1, 0x1.ebfbdff82c5a8p-3, 0x1.c6b08d7049fd0p-5,
    0x1.3b2ab6fba0114p-7, 0x1.5d87fe78d1630p-10, 0x1.4309130ed70c0p-13, 0x1.ffcbfba7e1000p-17,
    0x1.62bfc7ad6e400p-20, 0x1.b526641400000p-24, 0x1.e61b102460000p-28, 0x1.e7e123ea00000p-32,
};

/* fdlibm's log kernel, Lg1..Lg7 */
static const double LG[7] = {
    0x1.5555555555593p-1, 0x1.999999997fa04p-2, 0x1.2492494229359p-2, 0x1.c71c51d8e78afp-3,
    0x1.7466496cb03dep-3, 0x1.39a09d078c69fp-3, 0x1.2f112df3e5244p-3,
};

typedef struct {
  int32_t id;
  float value;
} la_cand;

struct la_workspace {
  int32_t n_vocab;
  la_cand* cand;   /* the working candidates */
  la_cand* nuc;    /* the plausibility nucleus, kept for the fallback draw */
  float* base;     /* the mixed base row, when it is not one of the rows */
  double* w;       /* weights of the candidates (and of the base row for the adaptive ratio) */
  double* w2;      /* weights of the reference row for the adaptive ratio */
  int32_t* counts; /* history counts by token id; all zero between calls */
};

/* ---- weights: exp2_weights / relative_weights of sampling.py ---- */

static double weight_scale(double temperature) {
  double c = LOG2E / temperature;
  return c <= DBL_MAX ? c : DBL_MAX;
}

static inline double exp2_weight(double d, double c, double dlo) {
  double dd = d > dlo ? d : dlo;
  double y = dd * c;
  double kd = y + SHIFT;
  double f = y - (kd - SHIFT);
  double p = ((((((((((POLY[11] * f + POLY[10]) * f + POLY[9]) * f + POLY[8]) * f + POLY[7]) * f +
                   POLY[6]) * f + POLY[5]) * f + POLY[4]) * f + POLY[3]) * f + POLY[2]) * f +
              POLY[1]) * f + POLY[0];
  uint64_t bits, b1, b2;
  memcpy(&bits, &kd, sizeof bits);
  uint64_t m = bits & 0xFFFFF, h = m >> 1;
  b1 = (h - 1) << 52;
  b2 = (m - h - 1) << 52;
  double s1, s2;
  memcpy(&s1, &b1, sizeof s1);
  memcpy(&s2, &b2, sizeof s2);
  return p * s1 * s2;
}

static void cand_weights(const la_cand* c, int32_t n, double temperature, double* w) {
  float top = -INFINITY;
  for (int32_t i = 0; i < n; i++) top = c[i].value > top ? c[i].value : top;
  if (top == INFINITY || top == -INFINITY) {
    for (int32_t i = 0; i < n; i++) w[i] = (top == INFINITY && c[i].value == INFINITY) ? 1.0 : 0.0;
    return;
  }
  double s = weight_scale(temperature), dlo = Y_MIN / s;
  for (int32_t i = 0; i < n; i++) w[i] = exp2_weight((double)c[i].value - (double)top, s, dlo);
}

static double seq_sum(const double* w, int32_t n) {
  double s = 0.0;
  for (int32_t i = 0; i < n; i++) s += w[i];
  return s;
}

static inline uint64_t bits_of(double x) {
  uint64_t b;
  memcpy(&b, &x, sizeof b);
  return b;
}

static inline double of_bits(uint64_t b) {
  double x;
  memcpy(&x, &b, sizeof x);
  return x;
}

/* a where mask is all ones, b where it is 0: a select without control flow, so loops vectorize. */
static inline double pick(uint64_t mask, double a, double b) {
  return of_bits((bits_of(a) & mask) | (bits_of(b) & ~mask));
}

/* log_exact of sampling.py: fdlibm's log on m in [sqrt(2)/2, sqrt(2)); x > 0 finite.
   k is an exact integer held in a double; bit tests stand for x < 2^-1022 and m >= sqrt(2). */
static inline double log_exact(double x) {
  uint64_t sub = -(uint64_t)(bits_of(x) < 0x0010000000000000ULL); /* subnormal: scale up first */
  uint64_t bits = bits_of(pick(sub, x * 0x1p54, x)), frac = bits & 0xFFFFFFFFFFFFFULL;
  uint64_t big = -(uint64_t)(frac >= 0x6a09e667f3bcdULL);
  double m = of_bits(frac | (big & 0x3FE0000000000000ULL) | (~big & 0x3FF0000000000000ULL));
  double k = of_bits((bits >> 52) | 0x4330000000000000ULL) - 0x1p52 - pick(sub, 1077.0, 1023.0) + pick(big, 1.0, 0.0);
  double f = m - 1.0, s = f / (2.0 + f), z = s * s;
  double r = (((((LG[6] * z + LG[5]) * z + LG[4]) * z + LG[3]) * z + LG[2]) * z + LG[1]) * z + LG[0];
  double hfsq = 0.5 * f * f;
  return k * LN2_HI - ((hfsq - (s * (hfsq + z * r) + k * LN2_LO)) - f);
}

/* ---- full-vocabulary passes ---- */

#if defined(__GNUC__)
typedef float la_v8f __attribute__((vector_size(32)));
typedef int32_t la_v8i __attribute__((vector_size(32)));

#if LA_AVX2
/* row_scan with vmaxps (v > mx ? v : mx, the same lane by lane) and one unordered test for NaN;
   +inf is flagged when it is the maximum. */
LA_AVX2_FN static int row_scan_avx2(const float* z, int32_t n, float* top) {
  __m256 mx = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(z + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    mx = _mm256_max_ps(v, mx);
  }
  float lanes[8], m = -INFINITY;
  _mm256_storeu_ps(lanes, mx);
  int32_t any = _mm256_movemask_ps(nan) != 0;
  for (int k = 0; k < 8; k++) m = lanes[k] > m ? lanes[k] : m;
  for (; i < n; i++) {
    any |= z[i] != z[i];
    m = z[i] > m ? z[i] : m;
  }
  if (top != NULL) *top = m;
  return any || m == INFINITY;
}
#endif

/* NaN/+inf flag and maximum of a row (top is NULL: flag only), 8 floats at a time. */
LA_CLONES static int row_scan(const float* z, int32_t n, float* top) {
#if LA_AVX2
  if (la_avx2()) return row_scan_avx2(z, n, top);
#endif
  const la_v8f inf = {INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY, INFINITY};
  la_v8f mx = -inf;
  la_v8i bad = {0};
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    la_v8f v;
    memcpy(&v, z + i, sizeof v);
    bad |= (v != v) | (v == inf);
    la_v8i gt = v > mx;
    mx = (la_v8f)(((la_v8i)v & gt) | ((la_v8i)mx & ~gt));
  }
  int32_t any = 0;
  float m = -INFINITY;
  for (int k = 0; k < 8; k++) { any |= bad[k]; m = mx[k] > m ? mx[k] : m; }
  for (; i < n; i++) {
    any |= (z[i] != z[i]) | (z[i] == INFINITY);
    m = z[i] > m ? z[i] : m;
  }
  if (top != NULL) *top = m;
  return any != 0;
}

/* Tokens with z >= th, in id order: a value-prefix of the sorted row. */
LA_CLONES static int32_t row_collect(const float* z, int32_t n, float th, la_cand* out) {
  const la_v8f t = {th, th, th, th, th, th, th, th};
  int32_t m = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    la_v8f a, b;
    memcpy(&a, z + i, sizeof a);
    memcpy(&b, z + i + 8, sizeof b);
    la_v8i hit = (a >= t) | (b >= t);
    if (!(hit[0] | hit[1] | hit[2] | hit[3] | hit[4] | hit[5] | hit[6] | hit[7])) continue;
    for (int k = 0; k < 16; k++)
      if (z[i + k] >= th) { out[m].id = i + k; out[m].value = z[i + k]; m++; }
  }
  for (; i < n; i++)
    if (z[i] >= th) { out[m].id = i; out[m].value = z[i]; m++; }
  return m;
}
#else
static int row_scan(const float* z, int32_t n, float* top) {
  int32_t any = 0;
  float m = -INFINITY;
  for (int32_t i = 0; i < n; i++) {
    any |= (z[i] != z[i]) | (z[i] == INFINITY);
    m = z[i] > m ? z[i] : m;
  }
  if (top != NULL) *top = m;
  return any != 0;
}

static int32_t row_collect(const float* z, int32_t n, float th, la_cand* out) {
  int32_t m = 0;
  for (int32_t i = 0; i < n; i++)
    if (z[i] >= th) { out[m].id = i; out[m].value = z[i]; m++; }
  return m;
}
#endif

#if LA_AVX2
/* exp2_weight of VW vectors in place, one stage across all of them at a time: the VW chains of
   dependent operations interleave in program order, so their latencies overlap. */
LA_AVX2_FN static inline void exp2_weight_avx2(__m256d* v, __m256d c, __m256d dlo) {
  const __m256d shift = _mm256_set1_pd(SHIFT);
  const __m256i low = _mm256_set1_epi64x(0xFFFFF), one = _mm256_set1_epi64x(1);
  __m256d f[VW], p[VW];
  for (int j = 0; j < VW; j++) v[j] = _mm256_mul_pd(_mm256_max_pd(v[j], dlo), c); /* max: v > dlo ? v : dlo */
  for (int j = 0; j < VW; j++) {
    __m256d kd = _mm256_add_pd(v[j], shift);
    f[j] = _mm256_sub_pd(v[j], _mm256_sub_pd(kd, shift));
    v[j] = kd;
  }
  for (int j = 0; j < VW; j++) p[j] = _mm256_add_pd(_mm256_mul_pd(_mm256_set1_pd(POLY[11]), f[j]), _mm256_set1_pd(POLY[10]));
  for (int q = 9; q >= 0; q--)
    for (int j = 0; j < VW; j++) p[j] = _mm256_add_pd(_mm256_mul_pd(p[j], f[j]), _mm256_set1_pd(POLY[q]));
  for (int j = 0; j < VW; j++) {
    __m256i m = _mm256_and_si256(_mm256_castpd_si256(v[j]), low), h = _mm256_srli_epi64(m, 1);
    __m256d s1 = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_sub_epi64(h, one), 52));
    __m256d s2 = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_sub_epi64(_mm256_sub_epi64(m, h), one), 52));
    v[j] = _mm256_mul_pd(_mm256_mul_pd(p[j], s1), s2);
  }
}

/* Weights of z[i .. i + 4 VW) into v. */
LA_AVX2_FN static inline void weights_avx2(const float* z, __m256d top, __m256d c, __m256d dlo, __m256d* v) {
  for (int j = 0; j < VW; j++) v[j] = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(z + 4 * j)), top);
  exp2_weight_avx2(v, c, dlo);
}

/* The lane sums of row_mass over z[i .. end) in steps of 4 VW; returns where it stopped. */
LA_AVX2_FN static int32_t row_mass_avx2(const float* z, int32_t i, int32_t end, double top, double c, double dlo,
                                        double* acc) {
  const __m256d vt = _mm256_set1_pd(top), vc = _mm256_set1_pd(c), vlo = _mm256_set1_pd(dlo);
  __m256d a[LANES / 4], v[VW];
  for (int j = 0; j < LANES / 4; j++) a[j] = _mm256_loadu_pd(acc + 4 * j);
  for (; i + 4 * VW <= end; i += 4 * VW) {
    weights_avx2(z + i, vt, vc, vlo, v);
    for (int j = 0; j < VW; j++) a[j % (LANES / 4)] = _mm256_add_pd(a[j % (LANES / 4)], v[j]); /* lane order kept */
  }
  for (int j = 0; j < LANES / 4; j++) _mm256_storeu_pd(acc + 4 * j, a[j]);
  return i;
}

/* A cheap float32 estimate of row_mass with a rigorous bound: *approx and *err with
   |row_mass - *approx| <= *err. Per token, w^ = 2^y^ with y^ = f32(f32(z - top) * f32(c)) (within
   3.1 * 2^-24 |y^| of the exact y, so w^ is within ln2 * 1.9e-7 |y^| w^ of 2^y) and 2^f by a degree-6
   Taylor polynomial in float (truncation 1.7e-7, rounding 1.6e-6 relative: bounded by 4e-6). Tokens
   with y^ < -126 count as 2^-126 (an absolute error below 2^-124 each). Sums: the doubles of A and
   the exact mass_total each err by at most (n + 600) 2^-53 relative; the float sum B of w^ |y^|
   by 3% for n < 2^22. */
LA_AVX2_FN static void row_mass_bound_avx2(const float* z, int32_t n, float top, double c, double dlo,
                                           double* approx, double* err) {
  static const float T6[7] = {1.0f, 0x1.62e430p-1f, 0x1.ebfbe0p-3f, 0x1.c6b08ep-5f, 0x1.3b2ab6p-7f,
                              0x1.5d87fep-10f, 0x1.430912p-13f}; /* ln2^k / k! */
  const __m256 vt = _mm256_set1_ps(top), vc = _mm256_set1_ps((float)c), ylo = _mm256_set1_ps(-126.0f);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  __m256 b = _mm256_setzero_ps();
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 y = _mm256_max_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(z + i), vt), vc), ylo);
    __m256 k = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(y, k);
    __m256 q = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(T6[6]), f), _mm256_set1_ps(T6[5]));
    for (int j = 4; j >= 0; j--) q = _mm256_add_ps(_mm256_mul_ps(q, f), _mm256_set1_ps(T6[j]));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), bias), 23);
    __m256 w = _mm256_mul_ps(q, _mm256_castsi256_ps(e));
    b = _mm256_sub_ps(b, _mm256_mul_ps(w, y)); /* y <= 0 */
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(w)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1)));
  }
  double la[8], sa = 0.0, sb = 0.0;
  float lb[8];
  _mm256_storeu_pd(la, a0);
  _mm256_storeu_pd(la + 4, a1);
  _mm256_storeu_ps(lb, b);
  for (int j = 0; j < 8; j++) sa += la[j], sb += lb[j];
  for (; i < n; i++) sa += exp2_weight((double)z[i] - (double)top, c, dlo); /* the tail: exact weights */
  *approx = sa;
  *err = sa * (4e-6 + (n + 600.0) * 0x1p-52) + 1.3e-7 * 1.03 * sb + n * 0x1p-124;
}
#endif

/* mass_total of sampling.py over the weights of a whole row, in token-id order. */
LA_CLONES static double row_mass(const float* z, int32_t n, double top, double c, double dlo) {
  double total = 0.0;
  for (int32_t base = 0; base < n; base += MASS_CHUNK) {
    int32_t end = n - base > MASS_CHUNK ? base + MASS_CHUNK : n;
    double acc[LANES] = {0};
    int32_t i = base;
#if LA_AVX2
    if (la_avx2()) i = row_mass_avx2(z, i, end, top, c, dlo, acc);
#endif
    for (; i + LANES <= end; i += LANES)
      for (int k = 0; k < LANES; k++) acc[k] += exp2_weight((double)z[i + k] - top, c, dlo);
    for (int k = 0; i + k < end; k++) acc[k] += exp2_weight((double)z[i + k] - top, c, dlo);
    for (int width = LANES / 2; width > 0; width /= 2)
      for (int k = 0; k < width; k++) acc[k] = acc[k] + acc[k + width];
    total += acc[0];
  }
  return total;
}

/* One token's JSD term in nats: p ln(2p/(p+q)) + q ln(2q/(p+q)), each part 0 when its mass is 0. */
static inline double jsd_term(double p, double q) {
  double s = p + q;
  double tp = p * log_exact((p + p) / s), tq = q * log_exact((q + q) / s);
  return pick(-(uint64_t)(bits_of(p) != 0), tp, 0.0) + pick(-(uint64_t)(bits_of(q) != 0), tq, 0.0); /* p, q >= +0 */
}

/* relative_weights of a whole row (top: its maximum, finite). */
LA_CLONES static void row_weights(const float* z, int32_t n, double top, double c, double dlo, double* w) {
  for (int32_t i = 0; i < n; i++) w[i] = exp2_weight((double)z[i] - top, c, dlo);
}

/* mass_total of sampling.py over an array. */
LA_CLONES static double lane_sum(const double* w, int32_t n) {
  double total = 0.0;
  for (int32_t base = 0; base < n; base += MASS_CHUNK) {
    int32_t end = n - base > MASS_CHUNK ? base + MASS_CHUNK : n;
    double acc[LANES] = {0};
    int32_t i = base;
    for (; i + LANES <= end; i += LANES)
      for (int k = 0; k < LANES; k++) acc[k] += w[i + k];
    for (int k = 0; i + k < end; k++) acc[k] += w[i + k];
    for (int width = LANES / 2; width > 0; width /= 2)
      for (int k = 0; k < width; k++) acc[k] = acc[k] + acc[k + width];
    total += acc[0];
  }
  return total;
}

/* The JSD terms of two weight rows, scaled by ib and ir, summed in mass_total's order. */
LA_CLONES static double row_jsd(const double* wb, const double* wr, int32_t n, double ib, double ir) {
  double total = 0.0;
  for (int32_t base = 0; base < n; base += MASS_CHUNK) {
    int32_t end = n - base > MASS_CHUNK ? base + MASS_CHUNK : n;
    double acc[LANES] = {0};
    int32_t i = base;
    for (; i + LANES <= end; i += LANES)
      for (int k = 0; k < LANES; k++) acc[k] += jsd_term(wb[i + k] * ib, wr[i + k] * ir);
    for (int k = 0; i + k < end; k++) acc[k] += jsd_term(wb[i + k] * ib, wr[i + k] * ir);
    for (int width = LANES / 2; width > 0; width /= 2)
      for (int k = 0; k < width; k++) acc[k] = acc[k] + acc[k + width];
    total += acc[0];
  }
  return total;
}

/* jsd_bits of sampling.py; wb and wr are scratch for n weights each. */
static double jsd_bits(const float* zb, float tb, const float* zr, float tr, int32_t n, double temperature,
                       double* wb, double* wr) {
  if (tb == -INFINITY || tr == -INFINITY) return 1.0;
  double c = weight_scale(temperature), dlo = Y_MIN / c;
  row_weights(zb, n, tb, c, dlo, wb);
  row_weights(zr, n, tr, c, dlo, wr);
  double sb = lane_sum(wb, n), sr = lane_sum(wr, n);
  if (!(sb > 0.0 && sr > 0.0)) return 1.0;
  double j = 0.5 * row_jsd(wb, wr, n, 1.0 / sb, 1.0 / sr) * LOG2E; /* nats to bits */
  return j > 0.0 ? (j < 1.0 ? j : 1.0) : 0.0;
}

/* base_row of sampling.py when mixing: b = f32(mix[k0]) z_k0, then b + f32(mix[k]) z_k in index order. */
LA_CLONES static void row_mix(const float* const* rows, const la_combination* cb, int32_t n, float* b) {
  int first = 1;
  for (int32_t k = 0; k < cb->k; k++) {
    if (cb->mix[k] == 0.0) continue;
    float m = (float)cb->mix[k];
    const float* z = rows[k];
    if (first)
      for (int32_t i = 0; i < n; i++) b[i] = m * z[i];
    else
      for (int32_t i = 0; i < n; i++) b[i] = b[i] + m * z[i];
    first = 0;
  }
}

static int32_t row_nonzero(const float* z, int32_t n, double top, double c, double dlo) {
  int32_t cnt = 0;
  for (int32_t i = 0; i < n; i++) cnt += exp2_weight((double)z[i] - top, c, dlo) > 0.0;
  return cnt;
}

static void row_fill(const float* z, int32_t n, la_cand* out) {
  for (int32_t i = 0; i < n; i++) { out[i].id = i; out[i].value = z[i]; }
}

/* ---- ordering: value descending, ties by id ascending ---- */

static inline int before(la_cand a, la_cand b) {
  return a.value > b.value || (a.value == b.value && a.id < b.id);
}

static inline void swap_cand(la_cand* a, la_cand* b) {
  la_cand t = *a;
  *a = *b;
  *b = t;
}

/* Partial quicksort: afterwards c[0..k) holds the k first candidates, in order. It recurses into the
   smaller part and loops on the larger, so the stack holds O(log n) frames whatever the input; the
   parts are disjoint, so the order in which they are sorted does not change the result. */
static void partial_sort(la_cand* c, int32_t n, int32_t k) {
  while (n > SMALL_SORT && k > 0) {
    int32_t mid = n / 2;
    if (before(c[mid], c[0])) swap_cand(&c[mid], &c[0]);
    if (before(c[n - 1], c[0])) swap_cand(&c[n - 1], &c[0]);
    if (before(c[n - 1], c[mid])) swap_cand(&c[n - 1], &c[mid]);
    swap_cand(&c[0], &c[mid]); /* median of three as the pivot, Hoare scheme */
    la_cand piv = c[0];
    int32_t i = -1, j = n;
    for (;;) {
      do i++; while (before(c[i], piv));
      do j--; while (before(piv, c[j]));
      if (i >= j) break;
      swap_cand(&c[i], &c[j]);
    }
    int32_t left = j + 1;
    if (k <= left) {
      n = left;
    } else if (left <= n - left) { /* sort all of the left part, then k - left of the right */
      partial_sort(c, left, left);
      c += left;
      n -= left;
      k -= left;
    } else {
      partial_sort(c + left, n - left, k - left);
      n = left;
      k = left;
    }
  }
  for (int32_t i = 1; i < n; i++) {
    la_cand x = c[i];
    int32_t j = i;
    while (j > 0 && before(x, c[j - 1])) { c[j] = c[j - 1]; j--; }
    c[j] = x;
  }
}

/* ---- chain stages ---- */

/* The nucleus threshold mask_top_p * mass_total, known at first only to lie in [lo, hi]; the exact
   total is computed when a prefix mass falls inside, so only then is the full exact pass paid. */
typedef struct {
  double lo, hi;
  const float* z;
  int32_t n;
  double top, s, dlo, top_p;
} la_thr;

/* above >= mask_top_p * mass_total, exactly as the reference decides it. */
static int reached(double above, la_thr* t) {
  if (above < t->lo) return 0;
  if (above >= t->hi) return 1;
  t->lo = t->hi = t->top_p * row_mass(t->z, t->n, t->top, t->s, t->dlo);
  return above >= t->lo;
}

/* plausibility_min_p: keep the nucleus tokens whose weight relative to the top is >= min_p, in order. */
static int32_t stage_min_mask(la_cand* c, int32_t n, double top, const la_params* p) {
  double s = weight_scale(p->mask_temperature), dlo = Y_MIN / s;
  int32_t m = 0;
  for (int32_t j = 0; j < n; j++)
    if (exp2_weight((double)c[j].value - top, s, dlo) >= p->mask_min_p) c[m++] = c[j];
  return m;
}

/* plausibility_mask: the nucleus of softmax(b/T_m) into ws->cand (topf finite); *sorted says if it is ordered. */
static int32_t stage_nucleus(const float* zb, int32_t n, float topf, const la_params* p, la_workspace* ws,
                             int* sorted) {
  la_cand* c = ws->cand;
  double* w = ws->w;
  *sorted = 1;
  double top = topf, s = weight_scale(p->mask_temperature), dlo = Y_MIN / s;
  if (p->mask_top_p >= 1.0) {
    int32_t nz = row_nonzero(zb, n, top, s, dlo);
    row_fill(zb, n, c);
    if (nz < 1) nz = 1;
    if (nz < n) partial_sort(c, n, nz);
    else *sorted = 0;
    return nz;
  }
  la_thr thr = {0.0, 0.0, zb, n, top, s, dlo, p->mask_top_p};
  double total = -1.0;
#if LA_AVX2
  if (la_avx2() && n < (1 << 22) && s >= 1e-20 && s <= 1e6) {
    double err;
    row_mass_bound_avx2(zb, n, topf, s, dlo, &total, &err);
    thr.lo = p->mask_top_p * (total - 2.0 * err); /* the margins of 2 err absorb these roundings */
    thr.hi = p->mask_top_p * (total + 2.0 * err);
  }
#endif
  if (total < 0.0) {
    total = row_mass(zb, n, top, s, dlo);
    thr.lo = thr.hi = p->mask_top_p * total;
  }
  /* Guess a value-prefix holding the mass (tokens with probability >= eps), widen on a miss;
     the last guess bounds the tail below (1 - p)/4 of the mass; then take the whole row. */
  double eps = 1e-4, eps_safe = (1.0 - p->mask_top_p) * 0.25 / n;
  int whole = 0;
  for (;;) {
    if (!(eps > eps_safe)) eps = eps_safe;
    int32_t m = n;
    if (!whole) {
      float th = (float)(top + (log2(eps * total) - 1.0) / s);
      m = row_collect(zb, n, nextafterf(th, -INFINITY), c);
    }
    if (whole || m == n) {
      row_fill(zb, n, c);
      m = n;
    }
    int32_t done = 0, keep = -1;
    double above = 0.0;
    while (done < m && keep < 0) {
      int32_t want = done == 0 ? HEAD_START : done * 4;
      if (want > m) want = m;
      partial_sort(c + done, m - done, want - done);
      for (int32_t j = done; j < want; j++) {
        if (reached(above, &thr)) { keep = j; break; }
        w[j] = exp2_weight((double)c[j].value - top, s, dlo);
        above += w[j];
      }
      done = want;
    }
    if (keep < 0) {
      if (!reached(above, &thr) && m < n) { /* the head missed the mass: widen, at last to the row */
        whole = eps == eps_safe;
        eps *= 1e-3;
        continue;
      }
      keep = m;
    }
    int32_t nz = 0;
    for (int32_t j = 0; j < keep; j++) nz += w[j] > 0.0;
    if (nz < keep) {
      nz = row_nonzero(zb, n, top, s, dlo);
      if (nz < keep) keep = nz;
    }
    return keep > 0 ? keep : 1;
  }
}

/* banned of sampling.py: drop the candidates that a guiding row (guide[k] s_t != 0), or the plain row
   while any row guides, holds at -inf; the order is kept. Returns how many are left. */
static int32_t stage_ban(la_cand* c, int32_t n, const float* const* rows, const la_combination* cb, double scale) {
  const float* by[LA_MAX_BRANCHES + 1];
  int32_t m = 0;
  for (int32_t k = 0; k < cb->k; k++)
    if (cb->guide[k] * scale != 0.0) by[m++] = rows[k];
  if (m == 0) return n;
  by[m++] = rows[cb->ref];
  int32_t kept = 0;
  for (int32_t i = 0; i < n; i++) {
    int ok = 1;
    for (int32_t r = 0; r < m; r++) ok &= by[r][c[i].id] != -INFINITY;
    if (ok) c[kept++] = c[i];
  }
  return kept;
}

/* guided of sampling.py: z = b + sum f32(guide[k] s_t) (z_k - z_ref) in index order; NaN -> -inf. */
static void stage_guide(la_cand* c, int32_t n, const float* const* rows, const la_combination* cb, double scale) {
  for (int32_t k = 0; k < cb->k; k++) {
    double g = cb->guide[k] * scale;
    if (g == 0.0) continue;
    float gf = (float)g;
    const float *zk = rows[k], *zr = rows[cb->ref];
    for (int32_t i = 0; i < n; i++) {
      float d = zk[c[i].id] - zr[c[i].id];
      float t = gf * d;
      c[i].value = c[i].value + t;
    }
  }
  for (int32_t i = 0; i < n; i++) c[i].value = c[i].value != c[i].value ? -INFINITY : c[i].value;
}

static int stage_penalties(la_cand* c, int32_t n, const int32_t* hist, int32_t nh, const la_params* p,
                           la_workspace* ws) {
  if (nh <= 0 || p->repeat_last_n == 0 ||
      (p->repeat_penalty == 1.0 && p->frequency_penalty == 0.0 && p->presence_penalty == 0.0))
    return LA_OK;
  int32_t start = nh > p->repeat_last_n ? nh - p->repeat_last_n : 0;
  for (int32_t i = start; i < nh; i++)
    if (hist[i] < 0) return LA_ERR_INVALID;
  for (int32_t i = start; i < nh; i++)
    if (hist[i] < ws->n_vocab) ws->counts[hist[i]]++;
  float rp = (float)p->repeat_penalty, fp = (float)p->frequency_penalty, pp = (float)p->presence_penalty;
  for (int32_t j = 0; j < n; j++) {
    int32_t cnt = ws->counts[c[j].id];
    if (cnt <= 0) continue;
    float v = c[j].value;
    v = v > 0 ? v / rp : v * rp;
    float pen = (float)((double)cnt * (double)fp + (double)pp);
    c[j].value = v - pen;
  }
  for (int32_t i = start; i < nh; i++)
    if (hist[i] < ws->n_vocab) ws->counts[hist[i]] = 0;
  return LA_OK;
}

/* nucleus_count over sorted candidates with the sequential total. */
static int32_t stage_top_p(const la_cand* c, int32_t n, double top_p, double* w) {
  cand_weights(c, n, 1.0, w);
  double thr = top_p * seq_sum(w, n), above = 0.0;
  int32_t keep = 0, nz = 0;
  for (int32_t j = 0; j < n; j++) {
    keep += above < thr;
    nz += w[j] > 0.0;
    above += w[j];
  }
  if (keep > nz) keep = nz;
  return keep > 0 ? keep : 1;
}

static int32_t stage_min_p(const la_cand* c, int32_t n, double min_p, double* w) {
  cand_weights(c, n, 1.0, w);
  int32_t cnt = 0;
  for (int32_t j = 0; j < n; j++) cnt += w[j] >= min_p;
  return cnt > 0 ? cnt : 1;
}

static uint64_t splitmix64_next(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/* Inverse-CDF draw; the index drawn, or -1 (no RNG use) when every weight is 0. */
static int32_t stage_draw(const la_cand* c, int32_t n, double temperature, uint64_t* rng, double* w) {
  cand_weights(c, n, temperature, w);
  double total = seq_sum(w, n);
  if (!(total > 0.0)) return -1;
  double u = (double)(splitmix64_next(rng) >> 11) * 0x1.0p-53;
  double target = u * total, cum = 0.0;
  for (int32_t j = 0; j < n; j++) {
    cum += w[j];
    if (cum > target) return j;
  }
  int32_t last = n - 1;
  while (last > 0 && !(w[last] > 0.0)) last--;
  return last;
}

static void stage_logprobs(const la_cand* c, int32_t n, int32_t token, double temperature, int32_t n_top,
                           double* w, la_result* out) {
  cand_weights(c, n, temperature > 0 ? temperature : 1.0, w);
  double total = seq_sum(w, n);
  double lt = total > 0.0 ? log_exact(total) : 0.0;
  int32_t cnt = 0;
  double tw[LA_MAX_TOP_LOGPROBS];
  for (int32_t i = 0; i < n; i++) {
    if (c[i].id == token) out->logprob = total > 0.0 && w[i] > 0.0 ? log_exact(w[i]) - lt : -INFINITY;
    if (n_top <= 0) continue;
    if (cnt == n_top && !(w[i] > tw[cnt - 1] || (w[i] == tw[cnt - 1] && c[i].id < out->top_ids[cnt - 1])))
      continue;
    int32_t j = cnt < n_top ? cnt++ : cnt - 1;
    while (j > 0 && (w[i] > tw[j - 1] || (w[i] == tw[j - 1] && c[i].id < out->top_ids[j - 1]))) {
      tw[j] = tw[j - 1];
      out->top_ids[j] = out->top_ids[j - 1];
      j--;
    }
    tw[j] = w[i];
    out->top_ids[j] = c[i].id;
  }
  out->n_top = cnt;
  for (int32_t j = 0; j < cnt; j++)
    out->top_logprobs[j] = total > 0.0 && tw[j] > 0.0 ? log_exact(tw[j]) - lt : -INFINITY;
}

/* ---- public API ---- */

la_workspace* la_workspace_new(int32_t n_vocab) {
  if (n_vocab < 1) return NULL;
  la_workspace* ws = calloc(1, sizeof *ws);
  if (ws == NULL) return NULL;
  ws->n_vocab = n_vocab;
  ws->cand = malloc((size_t)n_vocab * sizeof *ws->cand);
  ws->nuc = malloc((size_t)n_vocab * sizeof *ws->nuc);
  ws->base = malloc((size_t)n_vocab * sizeof *ws->base);
  ws->w = malloc((size_t)n_vocab * sizeof *ws->w);
  ws->w2 = malloc((size_t)n_vocab * sizeof *ws->w2);
  ws->counts = calloc((size_t)n_vocab, sizeof *ws->counts);
  if (!ws->cand || !ws->nuc || !ws->base || !ws->w || !ws->w2 || !ws->counts) {
    la_workspace_free(ws);
    return NULL;
  }
  return ws;
}

void la_workspace_free(la_workspace* ws) {
  if (ws == NULL) return;
  free(ws->cand);
  free(ws->nuc);
  free(ws->base);
  free(ws->w);
  free(ws->w2);
  free(ws->counts);
  free(ws);
}

int32_t la_abi_version(void) { return LA_ABI_VERSION; }
int32_t la_sizeof_params(void) { return (int32_t)sizeof(la_params); }
int32_t la_sizeof_result(void) { return (int32_t)sizeof(la_result); }
int32_t la_sizeof_combination(void) { return (int32_t)sizeof(la_combination); }

/* The base row b (a row itself, or ws->base) and its maximum; LA_ERR_NONFINITE if mixing overflowed. */
static int32_t base_row(const float* const* rows, const la_combination* cb, const float* tops, int32_t n,
                        la_workspace* ws, const float** b, float* top) {
  int32_t used = -1, n_used = 0;
  for (int32_t k = 0; k < cb->k; k++)
    if (cb->mix[k] != 0.0) {
      n_used++;
      if (used < 0) used = k;
    }
  if (n_used == 0) return LA_ERR_INVALID;
  if (n_used == 1 && cb->mix[used] == 1.0) {
    *b = rows[used];
    *top = tops[used];
    return LA_OK;
  }
  row_mix(rows, cb, n, ws->base);
  *b = ws->base;
  return row_scan(ws->base, n, top) ? LA_ERR_NONFINITE : LA_OK;
}

static int bad_combination(const float* const* rows, int32_t k, const la_combination* cb) {
  if (rows == NULL || cb == NULL || k < 1 || k > LA_MAX_BRANCHES || cb->k != k || cb->ref < -1 || cb->ref >= k)
    return 1;
  int guided = 0;
  for (int32_t i = 0; i < k; i++) {
    if (rows[i] == NULL || !(cb->mix[i] >= 0.0) || cb->guide[i] != cb->guide[i]) return 1;
    guided |= cb->guide[i] != 0.0;
  }
  return (guided || cb->adaptive) && (cb->ref < 0 || cb->guide[cb->ref] != 0.0);
}

int32_t la_choose(const float* const* rows, int32_t k, const la_combination* combo, int32_t n_vocab,
                  const la_params* p, const int32_t* history, int32_t n_history, uint64_t* rng_state,
                  la_workspace* ws, la_result* out) {
  if (out == NULL) return LA_ERR_INVALID;
  memset(out, 0, sizeof *out);
  out->ratio_scale = 1.0;
  out->bad_row = -1;
  if (bad_combination(rows, k, combo) || p == NULL || ws == NULL || n_vocab < 1 || n_vocab > ws->n_vocab)
    return LA_ERR_INVALID;
  int greedy = p->temperature == 0.0;
  if (!(p->temperature >= 0.0) || !(p->mask_temperature > 0.0) || !(p->mask_min_p >= 0.0 && p->mask_min_p <= 1.0) ||
      p->top_logprobs < 0 ||
      p->top_logprobs > LA_MAX_TOP_LOGPROBS || p->repeat_last_n < 0 || n_history < 0 ||
      (n_history > 0 && history == NULL) || (!greedy && rng_state == NULL))
    return LA_ERR_INVALID;
  float tops[LA_MAX_BRANCHES], topf;
  for (int32_t i = 0; i < k; i++)
    if (row_scan(rows[i], n_vocab, &tops[i])) {
      out->bad_row = i;
      return LA_ERR_NONFINITE;
    }
  const float* b;
  int32_t rc = base_row(rows, combo, tops, n_vocab, ws, &b, &topf);
  if (rc != LA_OK) {
    if (rc == LA_ERR_NONFINITE) out->bad_row = k;
    return rc;
  }
  if (topf == -INFINITY) { /* every token banned in the base row */
    out->bad_row = k;
    return LA_ERR_NO_TOKEN;
  }

  int sorted;
  la_cand* c = ws->cand;
  int32_t nn = stage_nucleus(b, n_vocab, topf, p, ws, &sorted);
  if (p->mask_min_p > 0.0) nn = stage_min_mask(c, nn, topf, p);
  out->nucleus_size = nn;
  if (combo->adaptive)
    out->ratio_scale =
        jsd_bits(b, topf, rows[combo->ref], tops[combo->ref], n_vocab, p->mask_temperature, ws->w, ws->w2);
  nn = stage_ban(c, nn, rows, combo, out->ratio_scale);
  if (nn == 0) return LA_ERR_NO_TOKEN;
  if (!greedy) memcpy(ws->nuc, c, (size_t)nn * sizeof *c);
  stage_guide(c, nn, rows, combo, out->ratio_scale);

  /* Penalties on the aligned nucleus, greedy or not; the nucleus itself came from the unpenalised b. */
  if (stage_penalties(c, nn, history, n_history, p, ws) != LA_OK) return LA_ERR_INVALID;

  const la_cand* kept = c;
  int32_t nk = nn, pick = 0;
  if (greedy) {
    for (int32_t i = 1; i < nn; i++)
      if (before(c[i], c[pick])) pick = i;
  } else {
    if (p->top_k > 0 && p->top_k < nk) {
      partial_sort(c, nk, p->top_k);
      nk = p->top_k;
    } else {
      partial_sort(c, nk, nk);
    }
    if (p->top_p < 1.0) nk = stage_top_p(c, nk, p->top_p, ws->w);
    if (p->min_p > 0.0) nk = stage_min_p(c, nk, p->min_p, ws->w);
    pick = stage_draw(c, nk, p->temperature, rng_state, ws->w);
    if (pick < 0) { /* every aligned value overflowed to -inf: draw by b over the same (finite) tokens */
      if (!sorted) partial_sort(ws->nuc, nn, nn);
      kept = ws->nuc;
      nk = nn;
      pick = stage_draw(kept, nk, p->mask_temperature, rng_state, ws->w);
    }
  }
  out->token = kept[pick].id;
  stage_logprobs(kept, nk, out->token, p->temperature, p->top_logprobs, ws->w, out);
  return LA_OK;
}
