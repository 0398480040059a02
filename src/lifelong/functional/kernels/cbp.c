/* Continual backprop's per-step statistics for a batch of one sample, Linear layers, the
 * contribution utility (lifelong.methods.cbp; Dohare et al., Nature 2024), in one call:
 *
 *   batch_j  = h_j                         (the unit's feature: the next layer's input)
 *   act_j    = |h_j|
 *   out_j    = Σ_k |W_next[k, j]|          (column sums of the next layer's weight)
 *   f_j     ← f_j + (1 − η)(h_j − f_j)     (running mean, as torch.lerp)
 *   u_j     ← η u_j + (1 − η) act_j out_j  (running utility)
 *
 * for every hidden layer, into the method's flat buffers at each layer's offset. The PyTorch path
 * of the method does the same with ~12 operator calls.
 */
#include <stdint.h>

static inline float absf(float x) { return x < 0.0f ? -x : x; }

void cbp_contribution_f32(int layers, const float *const *features, const float *const *next,
                          const int64_t *units, const int64_t *rows, float eta, float *batch,
                          float *act, float *out, float *mean, float *utility) {
  int64_t offset = 0;
  for (int i = 0; i < layers; i++) {
    const float *h = features[i], *w = next[i];
    int64_t n = units[i];
    float *b = batch + offset, *a = act + offset, *o = out + offset, *f = mean + offset,
          *u = utility + offset;
    #pragma omp simd
    for (int64_t j = 0; j < n; j++) o[j] = absf(w[j]);
    for (int64_t k = 1; k < rows[i]; k++) {
      const float *row = w + k * n;
      #pragma omp simd
      for (int64_t j = 0; j < n; j++) o[j] += absf(row[j]);
    }
    #pragma omp simd
    for (int64_t j = 0; j < n; j++) {
      float x = h[j];
      b[j] = x;
      a[j] = absf(x);
      f[j] = f[j] + (1.0f - eta) * (x - f[j]);
      u[j] = u[j] * eta + (1.0f - eta) * (a[j] * o[j]);
    }
    offset += n;
  }
}
