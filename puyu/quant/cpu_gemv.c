/* Weight-only int4/int8 matrix products for x86 CPUs with AVX2 + FMA (puyu.quant.cpu_gemv builds and loads this).
 *
 * y[M, N] = x[M, K] @ W[N, K]^T with W stored as puyu's weight-only layouts:
 *   int4: qweight uint8 [N, K/2], byte k = q[2k] | q[2k+1] << 4 (q in 0..15), table float [N, K/G, 2] = (scale, low),
 *         w = q * scale + low over each group of G inputs (G a multiple of 32);
 *   int8: qweight int8 [N, K] (-127..127), scale float [N], w = q * scale.
 * The activations are quantized per block of 32 inputs to int16 with their own scale, so a block of 32 weights costs
 * two integer multiply-adds (madd_epi16) instead of 32 float FMAs, and the products keep about 15 bits of each
 * activation (bf16 keeps 8): llama.cpp's int8 activations measured a logits cosine of 0.997 against the float
 * reference on a model with outlier channels, int16 keeps it above 0.999.  The group sums of x stay in float for the
 * zero term.  PyTorch's packed kernels convert every weight to float and measured 2-3x slower on 2 AVX2 cores.
 * Threads: OpenMP over output rows, through the OpenMP runtime PyTorch already loaded (same soname).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define QK 32

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Where input i of a 64-input chunk goes in int4 order: word j of the chunk's 32 bytes holds inputs 4j..4j+3 in its
 * four nibbles, and nibble k of all 16 words is one vector, so input 4j+k sits at 16k+j. */
static inline int chunk_position(int i) { return (i % 4) * 16 + i / 4; }

/* x [M, K] -> int16 blocks xq [M, K] with their scales xd [M, K/32] and float group sums xg [M, K/G] (G = 0: none).
 * `split` orders the activations as the int4 kernel reads its nibbles: pairs of blocks by chunk_position, a last
 * odd block even inputs first. */
static void quantize_rows(const float *x, int64_t M, int64_t K, int64_t G, int split, int16_t *xq, float *xd, float *xg) {
    const int64_t nb = K / QK;
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        for (int64_t b = 0; b < nb; b++) {
            const float *v = row + b * QK;
            float amax = 0.0f;
            for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(v[j]));
            const float d = amax / 32767.0f, id = amax > 0.0f ? 32767.0f / amax : 0.0f;
            const int paired = b + 1 < nb || b % 2 == 1;  /* part of a 64-input chunk */
            int16_t *out = xq + m * K + (split && paired ? b - b % 2 : b) * QK;
            for (int j = 0; j < QK; j++) {
                const int at = !split ? j : paired ? chunk_position((int)(b % 2) * QK + j) : (j & 1) * 16 + j / 2;
                out[at] = (int16_t)lrintf(v[j] * id);
            }
            xd[m * nb + b] = d;
        }
        if (G > 0) {
            for (int64_t g = 0; g < K / G; g++) {
                float s = 0.0f;
                for (int64_t j = 0; j < G; j++) s += row[g * G + j];
                xg[m * (K / G) + g] = s;
            }
        }
    }
}

/* acc += (w . x) * d for one block of 32: w as two vectors of 16 int16 (the block's even and odd inputs for int4, its
 * first and second halves for int8), x the block's 32 int16 activations in the same order. */
static inline __attribute__((always_inline)) __m256 block_dot(__m256i w0, __m256i w1, const int16_t *x, float d, __m256 acc) {
    const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)x)),
                                       _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(x + 16))));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d), acc);
}

/* One output row n of the int4 product for R (1..4) activation rows.  Weights are read 64 at a time: 32 bytes as 16
 * words whose four nibbles, shifted and masked in place, are four vectors of 16 int16 (no byte widening across
 * lanes), each multiplied with its 16 activations by one madd; the two blocks of the chunk land in the low and high
 * four lanes of the sum, scaled together.  Each chunk is used for every row.  BPG is the blocks per group as a
 * constant (1, 2, 4; 0 = any, read from G), so finding a block's group is a shift. */
static inline __attribute__((always_inline)) void int4_rows(const uint8_t *w, const float *t, const int16_t *xq,
                                                           const float *xd, const float *xg, int64_t K, int64_t G,
                                                           float *y, int64_t N, const int R, const int BPG) {
    const int64_t nb = K / QK, ng = K / G, bpg = BPG ? BPG : G / QK;
    const __m256i nibble = _mm256_set1_epi16(0x000F);
    __m256 acc[4];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m256i words = _mm256_loadu_si256((const __m256i *)(w + b * 16));
        const __m256i v0 = _mm256_and_si256(words, nibble), v1 = _mm256_and_si256(_mm256_srli_epi16(words, 4), nibble),
                      v2 = _mm256_and_si256(_mm256_srli_epi16(words, 8), nibble), v3 = _mm256_srli_epi16(words, 12);
        const float s0 = t[2 * (b / bpg)], s1 = t[2 * ((b + 1) / bpg)];
        for (int r = 0; r < R; r++) {
            const int16_t *x = xq + r * K + b * QK;
            const __m256i p = _mm256_add_epi32(
                _mm256_add_epi32(_mm256_madd_epi16(v0, _mm256_loadu_si256((const __m256i *)x)),
                                 _mm256_madd_epi16(v1, _mm256_loadu_si256((const __m256i *)(x + 16)))),
                _mm256_add_epi32(_mm256_madd_epi16(v2, _mm256_loadu_si256((const __m256i *)(x + 32))),
                                 _mm256_madd_epi16(v3, _mm256_loadu_si256((const __m256i *)(x + 48)))));
            const __m256 scale = _mm256_set_m128(_mm_set1_ps(s1 * xd[r * nb + b + 1]), _mm_set1_ps(s0 * xd[r * nb + b]));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r]);
        }
    }
    if (b < nb) {  /* a last block of 32 when K / 32 is odd */
        const __m128i raw = _mm_loadu_si128((const __m128i *)(w + b * 16)), low = _mm_set1_epi8(0x0F);
        const __m256i even = _mm256_cvtepu8_epi16(_mm_and_si128(raw, low));
        const __m256i odd = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), low));
        for (int r = 0; r < R; r++) acc[r] = block_dot(even, odd, xq + r * K + b * QK, t[2 * (b / bpg)] * xd[r * nb + b], acc[r]);
    }
    for (int r = 0; r < R; r++) {
        float low = 0.0f;  /* sum over groups of low * sum(x) */
        for (int64_t g = 0; g < ng; g++) low += t[2 * g + 1] * xg[r * ng + g];
        y[r * N] = hsum8(acc[r]) + low;
    }
}

#define INT4_ROWS(R) switch (bpg) { \
        case 1: int4_rows(w, t, xr, dr, gr, K, G, yr, N, R, 1); break; \
        case 2: int4_rows(w, t, xr, dr, gr, K, G, yr, N, R, 2); break; \
        case 4: int4_rows(w, t, xr, dr, gr, K, G, yr, N, R, 4); break; \
        default: int4_rows(w, t, xr, dr, gr, K, G, yr, N, R, 0); }

int puyu_int4_gemm(const float *x, int64_t M, int64_t K, const uint8_t *qweight, const float *table, int64_t N, int64_t G,
                   float *y, int threads) {
    if (K % QK || G % QK || K % G) return 1;
    const int64_t nb = K / QK, ng = K / G, bpg = G / QK;
    int16_t *xq = malloc(sizeof(int16_t) * M * K);
    float *xd = malloc(sizeof(float) * M * nb), *xg = malloc(sizeof(float) * M * ng);
    if (!xq || !xd || !xg) { free(xq); free(xd); free(xg); return 2; }
    quantize_rows(x, M, K, G, 1, xq, xd, xg);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *w = qweight + n * (K / 2);
        const float *t = table + n * ng * 2;
        for (int64_t m = 0; m < M; m += 4) {
            const int64_t rows = M - m < 4 ? M - m : 4;
            const int16_t *xr = xq + m * K;
            const float *dr = xd + m * nb, *gr = xg + m * ng;
            float *yr = y + m * N + n;
            switch (rows) {  /* constant row counts: the compiler keeps the accumulators in registers */
                case 4: INT4_ROWS(4) break;
                case 3: INT4_ROWS(3) break;
                case 2: INT4_ROWS(2) break;
                default: INT4_ROWS(1)
            }
        }
    }
    free(xq); free(xd); free(xg);
    return 0;
}

/* The 32 int8 weights of one block as two vectors of 16 int16. */
static inline __attribute__((always_inline)) void int8_unpack(const int8_t *w, __m256i *first, __m256i *second) {
    *first = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w));
    *second = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)));
}

/* One output row of the int8 product for R (1..4) activation rows (as int4_rows). */
static inline __attribute__((always_inline)) void int8_rows(const int8_t *w, float scale, const int16_t *xq, const float *xd,
                                                           int64_t K, float *y, int64_t N, const int R) {
    const int64_t nb = K / QK;
    __m256 even[4], odd[4];
    for (int r = 0; r < R; r++) even[r] = odd[r] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        __m256i a0, a1, b0, b1;
        int8_unpack(w + b * QK, &a0, &a1);
        int8_unpack(w + b * QK + QK, &b0, &b1);
        for (int r = 0; r < R; r++) {
            even[r] = block_dot(a0, a1, xq + r * K + b * QK, xd[r * nb + b], even[r]);
            odd[r] = block_dot(b0, b1, xq + r * K + b * QK + QK, xd[r * nb + b + 1], odd[r]);
        }
    }
    if (b < nb) {
        __m256i a0, a1;
        int8_unpack(w + b * QK, &a0, &a1);
        for (int r = 0; r < R; r++) even[r] = block_dot(a0, a1, xq + r * K + b * QK, xd[r * nb + b], even[r]);
    }
    for (int r = 0; r < R; r++) y[r * N] = hsum8(_mm256_add_ps(even[r], odd[r])) * scale;
}

int puyu_int8_gemm(const float *x, int64_t M, int64_t K, const int8_t *qweight, const float *scale, int64_t N, float *y,
                   int threads) {
    if (K % QK) return 1;
    const int64_t nb = K / QK;
    int16_t *xq = malloc(sizeof(int16_t) * M * K);
    float *xd = malloc(sizeof(float) * M * nb);
    if (!xq || !xd) { free(xq); free(xd); return 2; }
    quantize_rows(x, M, K, 0, 0, xq, xd, NULL);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t m = 0; m < M; m += 4) {
            const int64_t rows = M - m < 4 ? M - m : 4;
            const int8_t *w = qweight + n * K;
            const int16_t *xr = xq + m * K;
            float *yr = y + m * N + n;
            switch (rows) {
                case 4: int8_rows(w, scale[n], xr, xd + m * nb, K, yr, N, 4); break;
                case 3: int8_rows(w, scale[n], xr, xd + m * nb, K, yr, N, 3); break;
                case 2: int8_rows(w, scale[n], xr, xd + m * nb, K, yr, N, 2); break;
                default: int8_rows(w, scale[n], xr, xd + m * nb, K, yr, N, 1);
            }
        }
    }
    free(xq); free(xd);
    return 0;
}
