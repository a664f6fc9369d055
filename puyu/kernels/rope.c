/* Rotary position embedding for training, forward and backward in one pass each (AVX2 + FMA; puyu.kernels builds
 * this; the model's attention calls it through puyu.kernels.rope while gradients are recorded).
 *
 * x [B, T, H, D] (heads before the transpose to [B, H, T, D]), tables cos and sin [B, T, D], half = D / 2:
 *   out[.., j]        = x[j] cos[j] - x[j + half] sin[j]
 *   out[.., j + half] = x[j + half] cos[j + half] + x[j] sin[j + half]
 * which is the model's x * cos + rotate_half(x) * sin.  Float32 or bf16 x and tables; the result is bf16 only when both
 * are (torch's type promotion), then each product and the sum are rounded as torch rounds them.
 * Backward, the transposed rotation: dx[j] = d[j] cos[j] + d[j + half] sin[j + half] and
 * dx[j + half] = d[j + half] cos[j + half] - d[j] sin[j], in float32, rounded once to x's dtype.
 *
 * Why by hand: the torch form is five passes over q and k forward (two products, the half swap as a slice, a negation
 * and a concatenation, the sum) and about as many backward, through autograd: some 3% of a micro model's bf16 training
 * step on 2 Zen 4 cores, for data that one pass reads and writes once. */
#include <immintrin.h>
#include <stdint.h>

#include "vector_math.h"

/* One head's vector x (D values) rotated into out, 8 pairs (j, j + half) at a time; backward: the transposed rotation. */
static void rotate(const void *x, int x_bf16, const void *cos, const void *sin, int table_bf16, void *out, int out_bf16,
                   int64_t D, int backward, int round_each) {
    const int64_t half = D / 2;
    for (int64_t j = 0; j < half; j += 8) {
        const int64_t count = half - j;
        const __m256 x1 = load_floats(x, x_bf16, j, count), x2 = load_floats(x, x_bf16, j + half, count);
        const __m256 c1 = load_floats(cos, table_bf16, j, count), c2 = load_floats(cos, table_bf16, j + half, count);
        /* forward: the second half's sine multiplies x1, the first's x2; backward the other way round */
        const __m256 s1 = load_floats(sin, table_bf16, backward ? j + half : j, count);
        const __m256 s2 = load_floats(sin, table_bf16, backward ? j : j + half, count);
        __m256 a = _mm256_mul_ps(x1, c1), b = _mm256_mul_ps(x2, s1), c = _mm256_mul_ps(x2, c2), d = _mm256_mul_ps(x1, s2);
        if (round_each) a = round_bf16(a), b = round_bf16(b), c = round_bf16(c), d = round_bf16(d);
        const __m256 lo = backward ? _mm256_add_ps(a, b) : _mm256_sub_ps(a, b);
        const __m256 hi = backward ? _mm256_sub_ps(c, d) : _mm256_add_ps(c, d);
        store_floats(out, out_bf16, j, count, lo);
        store_floats(out, out_bf16, j + half, count, hi);
    }
}

/* x [B*T, H, D] with tables [B*T, D] -> out [B*T, H, D]; backward: x is the gradient and out the input's gradient. */
void puyu_rope(const void *x, int x_bf16, int64_t rows, int64_t H, int64_t D, const void *cos, const void *sin, int table_bf16,
               void *out, int out_bf16, int backward, int threads) {
    const size_t x_item = x_bf16 ? 2 : 4, table_item = table_bf16 ? 2 : 4, out_item = out_bf16 ? 2 : 4;
    const int round_each = !backward && x_bf16 && table_bf16;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t item = 0; item < rows * H; item++) {
        const int64_t r = item / H;
        rotate((const char *)x + (size_t)(item * D) * x_item, x_bf16, (const char *)cos + (size_t)(r * D) * table_item,
               (const char *)sin + (size_t)(r * D) * table_item, table_bf16, (char *)out + (size_t)(item * D) * out_item, out_bf16,
               D, backward, round_each);
    }
}
