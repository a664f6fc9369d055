/* Softmax cross-entropy of a chunk of logits, with its gradient written over the logits (AVX2 + FMA; puyu.kernels
 * builds this).  The training objective's LM head (puyu.train.objective) calls it on each chunk of [rows, vocab] logits.
 *
 * For each row r < rows with target t: loss[r] = log(sum_j exp(x_rj - m_r)) + m_r - x_rt (m_r the row's maximum) and,
 * when grad is set, x_rj becomes softmax(x_r)_j - [j == t] in the logits' own dtype (float32 or bf16, rounded to
 * nearest even as torch rounds).  Rows from `rows` to n are padding: their loss is 0 and their gradient 0.
 *
 * Why by hand: PyTorch does this in five passes over the chunk - bf16 logits cast to float32, log_softmax, exp, the
 * cast back, the target's -1 - each reading and writing the whole [rows, vocab] block through memory, where one row
 * (16-192 KB) fits the cache: about 11 ms of a 512 x 8192 bf16 chunk whose three products take 16 ms (2 Zen 4
 * cores).  Here each row is read once into a float32 buffer, exponentiated once and written once.
 * Each row is computed by the same operations whatever else the call holds (OpenMP hands out whole rows).
 * Returns 0, 2 when memory for a row buffer runs out, or 3 when a target is out of range. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

/* Row x (V values, float32 or bf16) into buf as float32; returns its maximum. */
static float load_row(const void *x, int bf16, int64_t V, float *buf) {
    __m256 top8 = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= V; j += 8) {
        const __m256 v = bf16 ? load_bf16x8((const uint16_t *)x + j) : _mm256_loadu_ps((const float *)x + j);
        _mm256_storeu_ps(buf + j, v);
        top8 = _mm256_max_ps(top8, v);
    }
    float lanes[8], top = -INFINITY;
    _mm256_storeu_ps(lanes, top8);
    for (int i = 0; i < 8; i++) top = lanes[i] > top ? lanes[i] : top;
    for (; j < V; j++) {
        buf[j] = bf16 ? float_of_bf16(((const uint16_t *)x)[j]) : ((const float *)x)[j];
        top = buf[j] > top ? buf[j] : top;
    }
    return top;
}

/* Row out = buf * scale in the logits' dtype. */
static void store_row(void *out, int bf16, int64_t V, const float *buf, float scale) {
    const __m256 scale8 = _mm256_set1_ps(scale);
    for (int64_t j = 0; j < V; j += 8) store_floats(out, bf16, j, V - j, _mm256_mul_ps(load_floats(buf, 0, j, V - j), scale8));
}

int puyu_softmax_cross_entropy(void *logits, int bf16, int64_t n, int64_t V, int64_t rows, const int64_t *targets, int grad,
                               float *loss, int threads) {
    for (int64_t r = 0; r < rows; r++)
        if (targets[r] < 0 || targets[r] >= V) return 3;
    const size_t row_bytes = (size_t)V * (bf16 ? 2 : 4);
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(max : failed)
    {
        float *buf = malloc(sizeof(float) * (size_t)V);
        if (!buf) failed = 2;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            char *x = (char *)logits + (size_t)r * row_bytes;
            if (r >= rows || !buf) {
                loss[r] = 0.0f;
                if (grad && r >= rows) memset(x, 0, row_bytes);
                continue;
            }
            const int64_t t = targets[r];
            const float top = load_row(x, bf16, V, buf);
            const float target = buf[t];
            const float sum = exp_shifted(buf, V, top);
            loss[r] = logf(sum) + top - target;
            if (grad) {
                const float inv = 1.0f / sum;
                const float d = buf[t] * inv - 1.0f;
                store_row(x, bf16, V, buf, inv);
                if (bf16)
                    ((uint16_t *)x)[t] = bf16_of(d);
                else
                    ((float *)x)[t] = d;
            }
        }
        free(buf);
    }
    return failed;
}
