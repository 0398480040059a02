/* UPGD's step on the CPU in two sweeps over float32 memory (lifelong.methods.upgd).
 *
 * Batch-1 streaming is bound by passes over memory: each extra read of a buffer the size of the
 * model costs more than its arithmetic, and it also evicts the weights the next forward pass
 * needs. ATen needs five passes for UPGD (trace, max, noise, gate, decay); this file does two:
 *
 *   sweep 1, per tensor:  v += c g θ, and the tensor's max of v (NaN if a v is NaN);
 *   sweep 2, per tensor:  g ← (g + σ ξ) sigmoid(−v / M) + wd θ       (protect)
 *                         g ← g + σ ξ sigmoid(−v / M) + wd θ         (no protect)
 *                         with sigmoid(·) = 1 where M ≤ 0 or M is not finite (the guard),
 *                         or, as the whole optimizer step, θ ← θ − lr · (that),
 *
 * where ξ is either read from given buffers or drawn here, without touching memory, by a
 * counter-based generator, Threefry2x32-20 (Salmon, Moraes, Dror and Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3", SC 2011), whose word pairs become normal pairs by Box–Muller.
 * Step s has the key threefry((s_lo, s_hi), user key); elements c + q and c + q + 512 of tensor t
 * (c a multiple of 1024, q < 512) come from threefry((c / 2 + q, t), step key).
 * `lifelong.functional.kernels.counter_noise` is the reference in PyTorch.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CHUNK 1024
#define HALF (CHUNK / 2)

/* e^x, about 2 ulp for x in [-87, 88] (clamped outside): x = k ln 2 + r, e^r by a polynomial. */
static inline __attribute__((always_inline)) float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
  float r = x - k * 0.693145751953125f - k * 1.428606765330187e-06f;
  float q = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667163e-1f + r * (4.1666645557e-2f +
            r * (8.3333337680e-3f + r * 1.3887310754e-3f)))));
  int32_t bits = ((int32_t)k + 127) << 23;
  float scale;
  memcpy(&scale, &bits, 4);
  return q * scale;
}

/* ln x for normal positive x: x = 2^e m, m in [√½, √2), ln m = 2 atanh((m − 1)/(m + 1)). */
static inline __attribute__((always_inline)) float log_f32(float x) {
  int32_t bits;
  memcpy(&bits, &x, 4);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  int32_t mbits = (bits & 0x007fffff) | 0x3f800000;
  float m;
  memcpy(&m, &mbits, 4);
  int big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  float series = s * (2.0f + s2 * (0.666666667f + s2 * (0.4f + s2 * (0.285714286f +
                 s2 * 0.222222222f))));
  return (float)e * 0.693147180559945f + series;
}

/* (k + ½) 2^−23 ∈ (0, 1) from the top 23 bits k of a word: exact in float32, never 0 or 1. */
static inline __attribute__((always_inline)) float unit_open(uint32_t word) {
  return ((float)(word >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

/* Box–Muller (1958): two independent N(0, 1) from two words. r = √(−2 ln u), u from the first
 * word (so |z| ≤ 5.7); the angle from the second: its top 2 bits pick the quadrant (centre
 * α = π/4, 3π/4, ...), the other 30 an offset φ ∈ [−π/4, π/4) whose sine and cosine are
 * Taylor polynomials (error < 4e-7); cos(α + φ), sin(α + φ) by the angle-sum formulas. */
static inline __attribute__((always_inline)) void box_muller(uint32_t w0, uint32_t w1,
                                                             float *z0, float *z1) {
  float r = sqrtf(-2.0f * log_f32(unit_open(w0)));
  uint32_t quadrant = w1 >> 30;
  float phi = ((float)(w1 & 0x3fffffffu) * (1.0f / 1073741824.0f) - 0.5f) * 1.57079632679f;
  float p2 = phi * phi;
  float sin_phi = phi * (1.0f - p2 * (1.0f / 6 - p2 * (1.0f / 120 - p2 * (1.0f / 5040))));
  float cos_phi = 1.0f - p2 * (0.5f - p2 * (1.0f / 24 - p2 * (1.0f / 720 - p2 * (1.0f / 40320))));
  float h = 0.70710678118654752f;
  float cos_a = ((quadrant + 1) & 2) ? -h : h;  /* α = (quadrant + ½) π/2 */
  float sin_a = (quadrant & 2) ? -h : h;
  *z0 = r * (cos_phi * cos_a - sin_phi * sin_a);
  *z1 = r * (sin_phi * cos_a + cos_phi * sin_a);
}

static inline __attribute__((always_inline)) uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }
#define TF_ROUND(r) { x0 += x1; x1 = rotl32(x1, r); x1 ^= x0; }

/* Threefry2x32-20 (Salmon et al. 2011; the Random123 and JAX default): counter (c0, c1), key
 * (k0, k1); rounds of add-rotate-xor, which vectorize on 32-bit lanes. */
static inline __attribute__((always_inline)) void threefry2x32(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1,
                                uint32_t *out0, uint32_t *out1) {
  uint32_t k2 = 0x1BD11BDAu ^ k0 ^ k1;
  uint32_t x0 = c0 + k0, x1 = c1 + k1;
  TF_ROUND(13) TF_ROUND(15) TF_ROUND(26) TF_ROUND(6)  x0 += k1; x1 += k2 + 1;
  TF_ROUND(17) TF_ROUND(29) TF_ROUND(16) TF_ROUND(24) x0 += k2; x1 += k0 + 2;
  TF_ROUND(13) TF_ROUND(15) TF_ROUND(26) TF_ROUND(6)  x0 += k0; x1 += k1 + 3;
  TF_ROUND(17) TF_ROUND(29) TF_ROUND(16) TF_ROUND(24) x0 += k1; x1 += k2 + 4;
  TF_ROUND(13) TF_ROUND(15) TF_ROUND(26) TF_ROUND(6)  x0 += k2; x1 += k0 + 5;
  *out0 = x0;
  *out1 = x1;
}

/* The known-answer check of threefry2x32 (tests): words = (c0, c1, k0, k1) → out[2]. */
void threefry2x32_20(const uint32_t *words, uint32_t *out) {
  threefry2x32(words[0], words[1], words[2], words[3], out, out + 1);
}

/* The key of one step: threefry2x32((step low, step high), user key). */
static void step_key(uint64_t step, uint32_t key0, uint32_t key1, uint32_t *k0, uint32_t *k1) {
  threefry2x32((uint32_t)step, (uint32_t)(step >> 32), key0, key1, k0, k1);
}

/* CHUNK standard normals for elements base .. base + CHUNK − 1 of tensor t, under a step key:
 * elements base + q and base + q + HALF are the Box–Muller pair of the words
 * threefry2x32((base / 2 + q, t), key). */
static void normals(float *out, uint64_t base, uint32_t t, uint32_t k0, uint32_t k1) {
  uint32_t block0 = (uint32_t)(base / 2);
  #pragma omp simd
  for (uint32_t q = 0; q < HALF; q++) {
    uint32_t w0, w1;
    threefry2x32(block0 + q, t, k0, k1, &w0, &w1);
    box_muller(w0, w1, out + q, out + q + HALF);
  }
}

/* Fill `out` (n floats) with the normals of tensor t at `step` (tests and the reference). */
void normal_f32(float *out, int64_t n, uint32_t t, uint64_t step, uint32_t key0,
                uint32_t key1) {
  float buffer[CHUNK];
  uint32_t k0, k1;
  step_key(step, key0, key1, &k0, &k1);
  for (int64_t base = 0; base < n; base += CHUNK) {
    normals(buffer, (uint64_t)base, t, k0, k1);
    int64_t k = n - base < CHUNK ? n - base : CHUNK;
    memcpy(out + base, buffer, (size_t)k * sizeof(float));
  }
}

/* Sweep 1. c: the trace coefficient (v += c g θ); trace = 0 only reads the maxima. */
static void trace_max(int n, float *const *g, float *const *p, float **v, const int64_t *size,
                      float c, int trace, float *maxima) {
  for (int t = 0; t < n; t++) {
    float m = -INFINITY;
    int bad = 0;
    float *vt = v[t];
    const float *gt = g[t], *pt = p[t];
    int64_t k = size[t];
    if (trace) {
      #pragma omp simd reduction(max : m) reduction(| : bad)
      for (int64_t i = 0; i < k; i++) {
        float x = vt[i] + c * gt[i] * pt[i];
        vt[i] = x;
        m = x > m ? x : m;
        bad |= x != x;
      }
    } else {
      #pragma omp simd reduction(max : m) reduction(| : bad)
      for (int64_t i = 0; i < k; i++) {
        float x = vt[i];
        m = x > m ? x : m;
        bad |= x != x;
      }
    }
    maxima[t] = bad ? NAN : m;
  }
}

/* Sweep 2 for one tensor: the transformed gradient d = gate · (g + σξ) + wd θ (protect) or
 * g + gate · σξ + wd θ, with gate = sigmoid(slope v), or 1 where `open` (the guard); ξ read from
 * `xi`, or drawn here when xi is NULL. lr = 0: g ← d (a gradient transform); lr > 0: θ ← θ − lr d
 * (the whole optimizer step; g is left as it was). */
static void gate(float *g, const float *v, float *p, const float *xi, int64_t k, int open,
                 float slope, float sigma, int protect, float wd, float lr, uint32_t t,
                 uint32_t k0, uint32_t k1) {
  float drawn[CHUNK];
  int draw = xi == NULL && sigma != 0.0f;
  int update = lr != 0.0f;
  if (xi == NULL && !draw) memset(drawn, 0, sizeof drawn);
  for (int64_t base = 0; base < k; base += CHUNK) {
    int64_t len = k - base < CHUNK ? k - base : CHUNK;
    float *gc = g + base, *pc = p + base;
    const float *vc = v + base;
    const float *noise = xi ? xi + base : drawn;
    if (draw) normals(drawn, (uint64_t)base, t, k0, k1);
    #pragma omp simd
    for (int64_t i = 0; i < len; i++) {
      float s = open ? 1.0f : 1.0f / (1.0f + exp_f32(-slope * vc[i]));  /* sigmoid(slope v) */
      float d = protect ? (gc[i] + sigma * noise[i]) * s : gc[i] + sigma * noise[i] * s;
      d += wd * pc[i];
      if (update) pc[i] -= lr * d;
      else gc[i] = d;
    }
  }
}

/* One step over n tensors: sweep 1 for all, then M (global: the largest; local: per tensor,
 * written to maxima[t]; global also to maxima[n]), then sweep 2. xi: n noise pointers or NULL;
 * lr: 0 to transform the gradients, > 0 to update the parameters (see `gate`). */
void upgd_step_f32(int n, float *const *g, float *const *p, float **v, const float *const *xi,
                   const int64_t *size, float c, int trace, float sigma, int protect, float wd,
                   int local, float lr, uint64_t step, uint32_t key0, uint32_t key1,
                   float *maxima) {
  trace_max(n, g, p, v, size, c, trace, maxima);
  float largest = -INFINITY;
  int bad = 0;
  for (int t = 0; t < n; t++) {
    bad |= maxima[t] != maxima[t];
    largest = maxima[t] > largest ? maxima[t] : largest;
  }
  maxima[n] = bad ? NAN : largest;
  uint32_t k0, k1;
  step_key(step, key0, key1, &k0, &k1);
  for (int t = 0; t < n; t++) {
    float m = local ? maxima[t] : maxima[n];
    int open = !(m > 0.0f && isfinite(m));
    gate(g[t], v[t], p[t], xi ? xi[t] : NULL, size[t], open, open ? 0.0f : -1.0f / m, sigma,
         protect, wd, lr, (uint32_t)t, k0, k1);
  }
}
