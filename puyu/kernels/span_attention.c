/* Causal attention within spans for training, forward and backward (AVX2 + FMA; puyu.kernels builds this; the model's
 * attention calls it through puyu.kernels.span_attention while gradients are recorded).
 *
 * q [B, T, H, D], k and v [B, T, KV, D] float32 (heads still after the positions, as the projections make them; H a
 * multiple of KV: grouped-query heads share their key/value head), spans [N, 3] int64 (row, start, end): a query at
 * position i of a span attends to the keys of that span at positions <= i, scaled by 1/sqrt(D).  Positions outside
 * every span get zeros.  Forward: out [B, T, H, D] and the log-sum-exp of each query's scores lse [B, T, H]; backward:
 * from the gradient of out, dq, dk and dv in the shapes of q, k and v, recomputing the probabilities from lse.
 *
 * Each task is one span and one key/value head with the query heads that share it, so a task owns the rows of dk and
 * dv it writes (no atomics, and the same sums in the same order whatever the thread count).  Within a task the span's
 * keys (and in the backward its values) are first copied transposed, [D][L], so that a query's scores against eight
 * keys are eight lanes of one vector and the products run as broadcast-and-FMA without horizontal sums.
 *
 * Why by hand: PyTorch's CPU flash attention splits the queries and keys in blocks sized for long sequences, and a
 * packed training row is mostly short documents: one SDPA call per document (each with its dispatch, its buffers and
 * the [B, H, T, D] transposes and concatenations around it) made attention 13-21% of a micro model's training step
 * on 2 cores.  Here one call covers every span of the batch, in the layout the projections produce.
 * Returns 0, 2 when memory for a task's buffers runs out, or 3 when a span is out of range. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

/* Up to 4 query rows against keys 0..count (a multiple of 8) of yt [D][lp]: s[r * lp + j] = alpha * x_r . y_j (x_r: D
 * floats); sixteen keys at a time where they fit, so each broadcast of a query value feeds two products. */
static void dot_keys(const float *const x[4], int n, const float *yt, int64_t lp, int64_t D, int64_t count, float alpha, float *s) {
    const float *x0 = x[0], *x1 = x[n > 1], *x2 = x[n > 2 ? 2 : 0], *x3 = x[n > 3 ? 3 : 0];
    const __m256 al = _mm256_set1_ps(alpha);
    int64_t j = 0;
    for (; j + 16 <= count; j += 16) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int64_t d = 0; d < D; d++) {
            const __m256 y = _mm256_loadu_ps(yt + d * lp + j), z = _mm256_loadu_ps(yt + d * lp + j + 8);
            const __m256 q0 = _mm256_broadcast_ss(x0 + d), q1 = _mm256_broadcast_ss(x1 + d);
            a0 = _mm256_fmadd_ps(q0, y, a0), b0 = _mm256_fmadd_ps(q0, z, b0);
            a1 = _mm256_fmadd_ps(q1, y, a1), b1 = _mm256_fmadd_ps(q1, z, b1);
            const __m256 q2 = _mm256_broadcast_ss(x2 + d), q3 = _mm256_broadcast_ss(x3 + d);
            a2 = _mm256_fmadd_ps(q2, y, a2), b2 = _mm256_fmadd_ps(q2, z, b2);
            a3 = _mm256_fmadd_ps(q3, y, a3), b3 = _mm256_fmadd_ps(q3, z, b3);
        }
        const __m256 a[4] = {a0, a1, a2, a3}, b[4] = {b0, b1, b2, b3};
        for (int r = 0; r < n; r++) {
            _mm256_storeu_ps(s + r * lp + j, _mm256_mul_ps(a[r], al));
            _mm256_storeu_ps(s + r * lp + j + 8, _mm256_mul_ps(b[r], al));
        }
    }
    for (; j < count; j += 8) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < D; d++) {
            const __m256 y = _mm256_loadu_ps(yt + d * lp + j);
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + d), y, a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(x1 + d), y, a1);
            a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(x2 + d), y, a2);
            a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(x3 + d), y, a3);
        }
        const __m256 a[4] = {a0, a1, a2, a3};
        for (int r = 0; r < n; r++) _mm256_storeu_ps(s + r * lp + j, _mm256_mul_ps(a[r], al));
    }
}

/* The largest of s[0..n). */
static float row_max(const float *s, int64_t n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
    float lanes[8], top = -INFINITY;
    _mm256_storeu_ps(lanes, m);
    for (int i = 0; i < 8; i++) top = lanes[i] > top ? lanes[i] : top;
    for (; j < n; j++) top = s[j] > top ? s[j] : top;
    return top;
}

/* out_r[0..D) = alpha * sum_{j < count} w[r * lp + j] y_j for the n <= 2 weight rows r, rows y_j of D floats `stride`
 * apart (D a multiple of 8): both rows' sums share each load of y_j. */
static void weighted_rows(const float *w, int64_t lp, int n, int64_t count, const float *y, int64_t stride, int64_t D,
                          float alpha, float *const out[2]) {
    const float *w1 = w + (n > 1) * lp;
    const __m256 al = _mm256_set1_ps(alpha);
    int64_t c = 0;
    for (; c + 32 <= D; c += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int64_t j = 0; j < count; j++) {
            const float *row = y + j * stride + c;
            const __m256 y0 = _mm256_loadu_ps(row), y1 = _mm256_loadu_ps(row + 8), y2 = _mm256_loadu_ps(row + 16),
                         y3 = _mm256_loadu_ps(row + 24), wa = _mm256_broadcast_ss(w + j), wb = _mm256_broadcast_ss(w1 + j);
            a0 = _mm256_fmadd_ps(wa, y0, a0), a1 = _mm256_fmadd_ps(wa, y1, a1), a2 = _mm256_fmadd_ps(wa, y2, a2);
            a3 = _mm256_fmadd_ps(wa, y3, a3), b0 = _mm256_fmadd_ps(wb, y0, b0), b1 = _mm256_fmadd_ps(wb, y1, b1);
            b2 = _mm256_fmadd_ps(wb, y2, b2), b3 = _mm256_fmadd_ps(wb, y3, b3);
        }
        _mm256_storeu_ps(out[0] + c, _mm256_mul_ps(a0, al)), _mm256_storeu_ps(out[0] + c + 8, _mm256_mul_ps(a1, al));
        _mm256_storeu_ps(out[0] + c + 16, _mm256_mul_ps(a2, al)), _mm256_storeu_ps(out[0] + c + 24, _mm256_mul_ps(a3, al));
        if (n > 1) {
            _mm256_storeu_ps(out[1] + c, _mm256_mul_ps(b0, al)), _mm256_storeu_ps(out[1] + c + 8, _mm256_mul_ps(b1, al));
            _mm256_storeu_ps(out[1] + c + 16, _mm256_mul_ps(b2, al)), _mm256_storeu_ps(out[1] + c + 24, _mm256_mul_ps(b3, al));
        }
    }
    for (; c < D; c += 8) {
        __m256 a = _mm256_setzero_ps(), b = a;
        for (int64_t j = 0; j < count; j++) {
            const __m256 yj = _mm256_loadu_ps(y + j * stride + c);
            a = _mm256_fmadd_ps(_mm256_broadcast_ss(w + j), yj, a), b = _mm256_fmadd_ps(_mm256_broadcast_ss(w1 + j), yj, b);
        }
        _mm256_storeu_ps(out[0] + c, _mm256_mul_ps(a, al));
        if (n > 1) _mm256_storeu_ps(out[1] + c, _mm256_mul_ps(b, al));
    }
}

/* acc[j] += sum_{r < n} w[r * lp + j] x_r for j < count (count even; acc rows of D floats): two keys' rows at a time
 * stay in registers while the n query rows stream past. */
static void accumulate_keys(const float *w, int64_t lp, int n, const float *const *x, int64_t count, int64_t D, float *acc) {
    for (int64_t j = 0; j < count; j += 2) {
        float *ra = acc + j * D, *rb = ra + D;
        int64_t c = 0;
        for (; c + 32 <= D; c += 32) {
            __m256 a0 = _mm256_loadu_ps(ra + c), a1 = _mm256_loadu_ps(ra + c + 8), a2 = _mm256_loadu_ps(ra + c + 16),
                   a3 = _mm256_loadu_ps(ra + c + 24), b0 = _mm256_loadu_ps(rb + c), b1 = _mm256_loadu_ps(rb + c + 8),
                   b2 = _mm256_loadu_ps(rb + c + 16), b3 = _mm256_loadu_ps(rb + c + 24);
            for (int r = 0; r < n; r++) {
                const float *xr = x[r] + c;
                const __m256 x0 = _mm256_loadu_ps(xr), x1 = _mm256_loadu_ps(xr + 8), x2 = _mm256_loadu_ps(xr + 16),
                             x3 = _mm256_loadu_ps(xr + 24), wa = _mm256_broadcast_ss(w + r * lp + j),
                             wb = _mm256_broadcast_ss(w + r * lp + j + 1);
                a0 = _mm256_fmadd_ps(wa, x0, a0), a1 = _mm256_fmadd_ps(wa, x1, a1), a2 = _mm256_fmadd_ps(wa, x2, a2);
                a3 = _mm256_fmadd_ps(wa, x3, a3), b0 = _mm256_fmadd_ps(wb, x0, b0), b1 = _mm256_fmadd_ps(wb, x1, b1);
                b2 = _mm256_fmadd_ps(wb, x2, b2), b3 = _mm256_fmadd_ps(wb, x3, b3);
            }
            _mm256_storeu_ps(ra + c, a0), _mm256_storeu_ps(ra + c + 8, a1), _mm256_storeu_ps(ra + c + 16, a2);
            _mm256_storeu_ps(ra + c + 24, a3), _mm256_storeu_ps(rb + c, b0), _mm256_storeu_ps(rb + c + 8, b1);
            _mm256_storeu_ps(rb + c + 16, b2), _mm256_storeu_ps(rb + c + 24, b3);
        }
        for (; c < D; c += 8) {
            __m256 a = _mm256_loadu_ps(ra + c), b = _mm256_loadu_ps(rb + c);
            for (int r = 0; r < n; r++) {
                const __m256 xr = _mm256_loadu_ps(x[r] + c);
                a = _mm256_fmadd_ps(_mm256_broadcast_ss(w + r * lp + j), xr, a);
                b = _mm256_fmadd_ps(_mm256_broadcast_ss(w + r * lp + j + 1), xr, b);
            }
            _mm256_storeu_ps(ra + c, a), _mm256_storeu_ps(rb + c, b);
        }
    }
}

static float dot(const float *a, const float *b, int64_t D) {
    __m256 s = _mm256_setzero_ps();
    for (int64_t c = 0; c < D; c += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), s);
    return hsum(s);
}

/* The L rows of D floats `stride` apart from src, transposed into dst [D][lp], zeros in columns L..lp. */
static void transpose_rows(const float *src, int64_t stride, int64_t L, int64_t D, int64_t lp, float *dst) {
    for (int64_t d = 0; d < D; d++) memset(dst + d * lp + L, 0, sizeof(float) * (size_t)(lp - L));
    for (int64_t j = 0; j < L; j++)
        for (int64_t d = 0; d < D; d++) dst[d * lp + j] = src[j * stride + d];
}

static int spans_valid(const int64_t *spans, int64_t N, int64_t B, int64_t T) {
    for (int64_t s = 0; s < N; s++) {
        const int64_t *sp = spans + 3 * s;
        if (sp[0] < 0 || sp[0] >= B || sp[1] < 0 || sp[2] > T || sp[1] >= sp[2]) return 0;
    }
    return 1;
}

/* Lanes i + 1 .. count of a row of probabilities (or their gradients) to zero: what a product over more keys than the
 * query sees must not add. */
static void clear_future(float *row, int64_t i, int64_t count) {
    if (count > i + 1) memset(row + i + 1, 0, sizeof(float) * (size_t)(count - i - 1));
}

int puyu_span_attention_forward(const float *q, const float *k, const float *v, int64_t B, int64_t T, int64_t H, int64_t KV,
                                int64_t D, const int64_t *spans, int64_t N, float *out, float *lse, int threads) {
    if (!spans_valid(spans, N, B, T)) return 3;
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t group = H / KV;
    memset(out, 0, sizeof(float) * (size_t)(B * T * H * D));  /* positions outside the spans */
    memset(lse, 0, sizeof(float) * (size_t)(B * T * H));
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(max : failed)
    for (int64_t task = 0; task < N * KV; task++) {
        const int64_t *sp = spans + 3 * (task / KV), g = task % KV;
        const int64_t b = sp[0], start = sp[1], L = sp[2] - sp[1], lp = (L + 7) / 8 * 8;
        float *kt = malloc(sizeof(float) * (size_t)(D * lp)), *s = malloc(sizeof(float) * (size_t)(4 * lp));
        if (!kt || !s) {
            free(kt), free(s), failed = 2;
            continue;
        }
        const int64_t base = b * T + start;  /* the span's first position in [B * T] */
        transpose_rows(k + (base * KV + g) * D, KV * D, L, D, lp, kt);
        const float *vs = v + (base * KV + g) * D;
        for (int64_t h = g * group; h < (g + 1) * group; h++) {
            for (int64_t i0 = 0; i0 < L; i0 += 4) {
                const int n = L - i0 < 4 ? (int)(L - i0) : 4;
                const int64_t count = (i0 + n + 7) / 8 * 8;
                const float *x[4];
                float *o[4];
                for (int r = 0; r < n; r++) x[r] = q + ((base + i0 + r) * H + h) * D, o[r] = out + ((base + i0 + r) * H + h) * D;
                dot_keys(x, n, kt, lp, D, count, scale, s);
                for (int r = 0; r < n; r++) {
                    float *row = s + r * lp;
                    const int64_t i = i0 + r;
                    const float top = row_max(row, i + 1), sum = exp_shifted(row, i + 1, top);
                    lse[(base + i) * H + h] = top + logf(sum);
                    const __m256 inv = _mm256_set1_ps(1.0f / sum);
                    for (int64_t j = 0; j <= i; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), inv));
                    clear_future(row, i, count);
                }
                for (int r = 0; r < n; r += 2)
                    weighted_rows(s + r * lp, lp, n - r < 2 ? 1 : 2, i0 + r + (n - r < 2 ? 1 : 2), vs, KV * D, D, 1.0f, o + r);
            }
        }
        free(kt), free(s);
    }
    return failed;
}

enum { QUERY_BLOCK = 16 };  /* the backward's queries per pass over the keys (a multiple of 4) */

int puyu_span_attention_backward(const float *grad, const float *q, const float *k, const float *v, const float *out,
                                 const float *lse, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t D, const int64_t *spans,
                                 int64_t N, float *dq, float *dk, float *dv, int threads) {
    if (!spans_valid(spans, N, B, T)) return 3;
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t group = H / KV;
    memset(dq, 0, sizeof(float) * (size_t)(B * T * H * D));
    memset(dk, 0, sizeof(float) * (size_t)(B * T * KV * D));
    memset(dv, 0, sizeof(float) * (size_t)(B * T * KV * D));
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(max : failed)
    for (int64_t task = 0; task < N * KV; task++) {
        const int64_t *sp = spans + 3 * (task / KV), g = task % KV;
        const int64_t b = sp[0], start = sp[1], L = sp[2] - sp[1], lp = (L + 7) / 8 * 8;
        float *kt = malloc(sizeof(float) * (size_t)(D * lp)), *vt = malloc(sizeof(float) * (size_t)(D * lp));
        float *p = malloc(sizeof(float) * (size_t)(QUERY_BLOCK * lp)), *ds = malloc(sizeof(float) * (size_t)(QUERY_BLOCK * lp));
        float *dk_acc = calloc((size_t)(lp * D), sizeof(float)), *dv_acc = calloc((size_t)(lp * D), sizeof(float));
        if (!kt || !vt || !p || !ds || !dk_acc || !dv_acc) {
            free(kt), free(vt), free(p), free(ds), free(dk_acc), free(dv_acc), failed = 2;
            continue;
        }
        const int64_t base = b * T + start;
        const float *ks = k + (base * KV + g) * D;
        transpose_rows(ks, KV * D, L, D, lp, kt);
        transpose_rows(v + (base * KV + g) * D, KV * D, L, D, lp, vt);
        for (int64_t h = g * group; h < (g + 1) * group; h++) {
            for (int64_t i0 = 0; i0 < L; i0 += QUERY_BLOCK) {
                const int n = L - i0 < QUERY_BLOCK ? (int)(L - i0) : QUERY_BLOCK;
                const int64_t count = (i0 + n + 7) / 8 * 8;
                const float *x[QUERY_BLOCK], *d[QUERY_BLOCK];
                float *dqr[QUERY_BLOCK];
                for (int r = 0; r < n; r++) {
                    const int64_t at = (base + i0 + r) * H + h;
                    x[r] = q + at * D, d[r] = grad + at * D, dqr[r] = dq + at * D;
                }
                for (int r = 0; r < n; r += 4) {
                    const int m = n - r < 4 ? n - r : 4;
                    const int64_t upto = (i0 + r + m + 7) / 8 * 8;
                    dot_keys(x + r, m, kt, lp, D, upto, scale, p + r * lp);
                    dot_keys(d + r, m, vt, lp, D, upto, 1.0f, ds + r * lp);
                }
                for (int r = 0; r < n; r++) {  /* p = exp(s / sqrt(D) - lse), ds = p (dp - delta) / sqrt(D) */
                    const int64_t i = i0 + r, at = (base + i) * H + h;
                    float *pr = p + r * lp, *dsr = ds + r * lp;
                    const __m256 scale8 = _mm256_set1_ps(scale), lse8 = _mm256_set1_ps(lse[at]);
                    const __m256 delta8 = _mm256_set1_ps(dot(d[r], out + at * D, D));
                    for (int64_t j = 0; j <= i; j += 8) {  /* lanes past i are cleared below */
                        const __m256 pj = exp8(_mm256_sub_ps(_mm256_loadu_ps(pr + j), lse8));
                        _mm256_storeu_ps(pr + j, pj);
                        _mm256_storeu_ps(dsr + j, _mm256_mul_ps(_mm256_mul_ps(pj, _mm256_sub_ps(_mm256_loadu_ps(dsr + j), delta8)), scale8));
                    }
                    clear_future(pr, i, count), clear_future(dsr, i, count);
                }
                for (int r = 0; r < n; r += 2)
                    weighted_rows(ds + r * lp, lp, n - r < 2 ? 1 : 2, i0 + r + (n - r < 2 ? 1 : 2), ks, KV * D, D, 1.0f, dqr + r);
                accumulate_keys(ds, lp, n, x, count, D, dk_acc);
                accumulate_keys(p, lp, n, d, count, D, dv_acc);
            }
        }
        for (int64_t j = 0; j < L; j++) {
            memcpy(dk + ((base + j) * KV + g) * D, dk_acc + j * D, sizeof(float) * (size_t)D);
            memcpy(dv + ((base + j) * KV + g) * D, dv_acc + j * D, sizeof(float) * (size_t)D);
        }
        free(kt), free(vt), free(p), free(ds), free(dk_acc), free(dv_acc);
    }
    return failed;
}
