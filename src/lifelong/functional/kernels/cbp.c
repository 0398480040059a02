/* Continual backprop's per-step statistics for a batch of one sample and Linear layers
 * (lifelong.methods.cbp; Dohare et al., Nature 2024), all hidden layers in one call. For each
 * hidden unit j, with h_j its feature (the next layer's input) and η the decay:
 *
 *   batch_j  = h_j
 *   f_j     ← f_j + (1 − η)(h_j − f_j)                  running mean, computed as torch.lerp
 *   out_j    = Σ_k |W_next[k, j]|                         outgoing weight magnitude
 *   contribution:  act_j = |h_j|
 *   adaptable:     age_j += 1,  −f̂_j = f_j / (η^age_j − 1)   (bias-corrected mean, via expm1)
 *                  act_j = |h_j − f̂_j|,  out_j /= max(Σ_i |W_in[j, i]|, FLT_MIN)
 *   u_j     ← η u_j + (1 − η) act_j out_j                 running utility
 *
 * into the method's flat buffers at each layer's offset: what its PyTorch path computes with
 * 12-20 operator calls.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

static inline float absf(float x) { return x < 0.0f ? -x : x; }

/* o[j] = Σ_k |w[k, j]| for a row-major [rows, n] matrix. */
static void column_sums(float *o, const float *w, int64_t rows, int64_t n) {
  #pragma omp simd
  for (int64_t j = 0; j < n; j++) o[j] = absf(w[j]);
  for (int64_t k = 1; k < rows; k++) {
    const float *row = w + k * n;
    #pragma omp simd
    for (int64_t j = 0; j < n; j++) o[j] += absf(row[j]);
  }
}

void cbp_statistics_f32(int layers, const float *const *features, const float *const *next,
                        const int64_t *units, const int64_t *rows, float eta, int adaptable,
                        const float *const *incoming, const int64_t *fan_in, float log_decay,
                        float *ages, float *batch, float *act, float *out, float *in,
                        float *corrected, float *mean, float *utility) {
  int64_t offset = 0;
  for (int i = 0; i < layers; i++) {
    const float *h = features[i];
    int64_t n = units[i];
    float *b = batch + offset, *a = act + offset, *o = out + offset, *f = mean + offset,
          *u = utility + offset;
    column_sums(o, next[i], rows[i], n);
    float w = 1.0f - eta;  /* torch.lerp's two forms, so that w = 1 gives f = h exactly */
    #pragma omp simd
    for (int64_t j = 0; j < n; j++) {
      b[j] = h[j];
      f[j] = w < 0.5f ? f[j] + w * (h[j] - f[j]) : h[j] - (h[j] - f[j]) * (1.0f - w);
    }
    if (adaptable) {
      float *age = ages + offset, *c = corrected + offset, *s = in + offset;
      const float *weights_in = incoming[i];
      for (int64_t j = 0; j < n; j++) {
        age[j] += 1.0f;
        c[j] = f[j] / expm1f(age[j] * log_decay);  /* −f̂; η = 0: log_decay = −∞, −f̂ = −f */
        a[j] = absf(h[j] + c[j]);
        float total = 0.0f;
        const float *row = weights_in + j * fan_in[i];
        #pragma omp simd reduction(+ : total)
        for (int64_t k = 0; k < fan_in[i]; k++) total += absf(row[k]);
        s[j] = total;
        o[j] /= total > FLT_MIN ? total : FLT_MIN;
      }
    } else {
      #pragma omp simd
      for (int64_t j = 0; j < n; j++) a[j] = absf(h[j]);
    }
    #pragma omp simd
    for (int64_t j = 0; j < n; j++) u[j] = u[j] * eta + (1.0f - eta) * (a[j] * o[j]);
    offset += n;
  }
}
