/* Decode attention straight from a paged key/value cache, for x86 CPUs with AVX2 + FMA (puyu.kernels builds this).
 *
 * out[b, h] = softmax(scale * q[b, h] . K[slots[b, t], h / G]) V[slots[b, t], h / G] over t < lengths[b], with
 * G = H / KV query heads per key/value head.  The cache is [slots, KV, D] float32 per layer (puyu.engine.paged_cache).
 * Before this kernel, a decode step gathered every sequence's keys and values into contiguous copies once per layer and
 * called SDPA on them (padded to the longest sequence, with a mask): two copies of the whole context and a kernel
 * launch sized for long queries, per layer and step.  Here each key and value row is read where it lies, once for
 * all G query heads that share it.
 *
 * Each (sequence, key/value head) pair is computed by the same operations whatever else the call holds (OpenMP hands
 * out whole pairs), so batched decoding, speculative draft rows and lone decoding give the same bits.
 * Two passes per pair: the scores (kept in a buffer of G x length floats), then their softmax and the weighted sum of
 * the values (exp8, vector_math.h).
 * Returns 0, 2 when memory for the scores runs out, or 3 when a slot or a length is out of range. */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#include "vector_math.h"

static inline float dot(const float *a, const float *b, int64_t D) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= D; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum(acc);
    for (; i < D; i++) s += a[i] * b[i];
    return s;
}

/* The lane sums of 8 vectors as one vector: out[k] = v[k][0] + ... + v[k][7]. */
static inline __m256 sums8(const __m256 *v) {
    const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));  /* per 128-bit half */
    const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

/* scores[g * n + t] = scale * q_g . k_t for the G query heads and n cached rows.  Keys go 8 at a time (D a multiple of
 * 8): each key's products stay in its own vector and the 8 are summed together (sums8), a few instructions for 8
 * scores where a lone dot product's horizontal sum takes as many for one; the last n % 8 keys one by one. */
static void scores_of(const float *q, const float *keys, const int64_t *slots, int64_t n, int64_t KV, int64_t j, int64_t G,
                      int64_t D, float scale, float *scores) {
    const __m256 scale8 = _mm256_set1_ps(scale);
    int64_t t = 0;
    for (; D % 8 == 0 && t + 8 <= n; t += 8) {
        const float *k[8];
        for (int i = 0; i < 8; i++) k[i] = keys + (slots[t + i] * KV + j) * D;
        for (int64_t g = 0; g < G; g++) {
            __m256 acc[8];
            for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
            for (int64_t d = 0; d < D; d += 8) {
                const __m256 qv = _mm256_loadu_ps(q + g * D + d);
                for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[i] + d), acc[i]);
            }
            _mm256_storeu_ps(scores + g * n + t, _mm256_mul_ps(scale8, sums8(acc)));
        }
    }
    for (; t < n; t++) {
        const float *k = keys + (slots[t] * KV + j) * D;
        for (int64_t g = 0; g < G; g++) scores[g * n + t] = scale * dot(q + g * D, k, D);
    }
}

/* o [D] = sum over t of p[t] * v_t, in t order; runs of 64 outputs are kept in registers across all n rows. */
static void weighted_sum(const float *p, const float *values, const int64_t *slots, int64_t n, int64_t KV, int64_t j, int64_t D,
                         float *o) {
    int64_t base = 0;
    for (; base + 64 <= D; base += 64) {
        __m256 acc[8];
        for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t t = 0; t < n; t++) {
            const float *v = values + (slots[t] * KV + j) * D + base;
            const __m256 pt = _mm256_set1_ps(p[t]);
            for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 8 * i), acc[i]);
        }
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(o + base + 8 * i, acc[i]);
    }
    for (int64_t i = base; i < D; i++) o[i] = 0.0f;
    for (int64_t t = 0; base < D && t < n; t++) {
        const float *v = values + (slots[t] * KV + j) * D;
        const __m256 pt = _mm256_set1_ps(p[t]);
        int64_t i = base;
        for (; i + 8 <= D; i += 8) _mm256_storeu_ps(o + i, _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + i), _mm256_loadu_ps(o + i)));
        for (; i < D; i++) o[i] += p[t] * v[i];
    }
}

/* One (sequence, key/value head) pair: G query heads q [G, D] over n cached rows -> out [G, D]. */
static int pair(const float *q, const float *keys, const float *values, const int64_t *slots, int64_t n, int64_t KV,
                int64_t j, int64_t G, int64_t D, float scale, float *out) {
    if (n < 1) return 3;
    float *scores = malloc(sizeof(float) * (size_t)(G * n + 8));
    if (!scores) return 2;
    scores_of(q, keys, slots, n, KV, j, G, D, scale, scores);
    for (int64_t g = 0; g < G; g++) {
        float *s = scores + g * n;
        float top = s[0];
        for (int64_t t = 1; t < n; t++) top = s[t] > top ? s[t] : top;
        const float sum = exp_shifted(s, n, top);
        float *o = out + g * D;
        weighted_sum(s, values, slots, n, KV, j, D, o);
        const float inv = 1.0f / sum;
        for (int64_t i = 0; i < D; i++) o[i] *= inv;
    }
    free(scores);
    return 0;
}

/* q [B, H, D], keys/values [S, KV, D], slots [C, L], out [B, H, D]: query row b attends the first lengths[b] entries
 * of slots row rows[b] (rows NULL: row b), so the rows of one sequence (a prompt chunk's tokens, draft tokens) share
 * its row of slots, each with its own length: every row computed as a lone decode step computes it. */
int puyu_paged_decode_attention(const float *q, int64_t B, int64_t H, int64_t KV, int64_t D, const float *keys,
                                const float *values, int64_t S, const int64_t *slots, int64_t C, int64_t L,
                                const int64_t *rows, const int64_t *lengths, float scale, float *out, int threads) {
    for (int64_t i = 0; i < B; i++) {
        const int64_t row = rows ? rows[i] : i;
        if (row < 0 || row >= C || lengths[i] < 1 || lengths[i] > L) return 3;
        for (int64_t t = 0; t < lengths[i]; t++)
            if (slots[row * L + t] < 0 || slots[row * L + t] >= S) return 3;
    }
    const int64_t G = H / KV;
    int failed = 0;
    /* pairs dealt out in turn: a prompt chunk's rows attend ever longer contexts, and halves in order left one thread
     * with three times the other's work */
#pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(max : failed)
    for (int64_t item = 0; item < B * KV; item++) {
        const int64_t b = item / KV, j = item % KV, offset = (b * H + j * G) * D;
        const int code = pair(q + offset, keys, values, slots + (rows ? rows[b] : b) * L, lengths[b], KV, j, G, D, scale, out + offset);
        failed = code > failed ? code : failed;
    }
    return failed;
}
