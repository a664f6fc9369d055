/* Weight-only int4/int8 matrix products for x86 CPUs with AVX2 + FMA (puyu.kernels.build builds and loads this).
 *
 * y[M, N] = x[M, K] @ W[N, K]^T.  The weights are stored in tiles of 8 output rows, so that each 32-bit lane of an
 * AVX2 vector belongs to one output row: a product is a broadcast activation pair times a vector of 8 rows' weight
 * pairs (madd_epi16), and a tile's 8 sums come out as one vector with no horizontal additions per row.  The old
 * row-major layout summed each row horizontally and paid a fixed cost per row that, at the decode widths of small
 * models (576 inputs: 9 loop turns a row), cost as much as the products.
 *
 * Layouts (N8 = N rounded up to 8; the padding rows are zero and never written out):
 *   int4: codes uint32 [N8/8, K/8, 8]: word (t, c, j) holds row 8t+j's codes for inputs 8c..8c+7, input 8c+2i in bits
 *         4i..4i+3 and input 8c+2i+1 in bits 16+4i..16+4i+3, so a shift by 4i and a mask leave the pair as two int16;
 *         table float16 [N8/8, K/G, 2, 8]: per group, the tile's 8 scales, then its 8 lows: w = q * scale + low
 *         (half precision as llama.cpp's Q4_1 keeps them: a quarter less to read per weight than float32, and decode
 *         reads every weight once a token).
 *   int8: codes int8 [N8/8, K/2, 8, 2]: row 8t+j's weights for inputs 2p and 2p+1; scale float [N8]: w = q * scale.
 * The activations are quantized per block of 32 inputs to int16 with their own scale, so a block of 32 inputs of 8 rows
 * costs 16 integer multiply-adds, and the products keep about 15 bits of each activation (bf16 keeps 8): llama.cpp's
 * int8 activations measured a logits cosine of 0.997 against the float reference on a model with outlier channels,
 * int16 keeps it above 0.999.  The group sums of x stay in float for the low term.  Each activation row is computed by
 * the same operations whatever else the call holds, so batched and speculative decoding give the bits of single rows.
 * Three builds (puyu.kernels.build picks the one the CPU runs): AVX2; AVX-VNNI (Intel's AVX2-only client cores since
 * Alder Lake), where vpdpwssd / vpdpbusd fuse each multiply-add with its accumulation (1.2x the int4 and 1.3x the int8
 * products at 4-8 rows); and AVX-512 VNNI, where two neighbouring tiles also share one 512-bit vector.  Integer sums
 * are exact and each lane's float steps are the same, so every build gives the same bits.
 * Threads: OpenMP over (pairs of) tiles, through the OpenMP runtime PyTorch already loaded (same soname).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define QK 32
#define ROWS 4 /* activation rows sharing one unpacked weight vector */
/* Codes are prefetched 4 KiB ahead of use (AHEAD uint32 words; 4 * AHEAD int8 codes): decode streams every weight from
 * memory once a token, and with only two threads the hardware prefetcher alone left 5-10% of a decode's products
 * waiting on memory (the built-in model's 210 layers, AVX-512 build).  The hardware prefetcher stops at 4 KiB pages, a
 * software prefetch does not: on a 2-core Xeon, one stream's int4 layers took 8% less time 4 KiB ahead than 512 bytes
 * ahead (AVX2, AVX-VNNI and AVX-512 builds alike; 2 KiB and 8 KiB no better), and the int8 LM head of the 256-bit
 * builds, which had no prefetch, 30-37% less (1 row; 28% at 8 rows); 32 rows, computed from cache, unchanged. */
#define AHEAD 1024

/* x [M, K] -> blocks of 32 quantized activations with their scales xd [M, K/32] and float group sums xg [M, K/G]
 * (G = 0: none).  bits 16: int16 xq [M, K] in input order, scale max|x| / 32767.  bits 8: int8 xq [M, K], scale
 * max|x| / 127, each run of 8 inputs stored in the order 0,4,1,5,2,6,3,7 (the order int4_tile8 unpacks weights in).
 * The group sums (for the low term: w = q * scale + low) are of x itself with int16, of the int8 blocks (codes times
 * scale) with int8: sum((q * scale + low) * xq) is then the product with the weights as they are, whose rounding error
 * grows with |w|, while low * sum(x) leaves q * scale times it, 0..15 steps: measured on the built-in model, logits
 * cosine against float 0.9956 (min 0.84) with the sums of x, against 0.9993 with the sums of the blocks.
 * Vectorized: at decode widths this runs once per product and its scalar form cost as much as a small product. */
static void quantize_rows(const float *x, int64_t M, int64_t K, int64_t G, int bits, void *xq, float *xd, float *xg) {
    const int64_t nb = K / QK;
    const float top_code = bits == 8 ? 127.0f : 32767.0f;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i dwords = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i bytes = _mm256_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15,
                                           0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * K;
        for (int64_t b = 0; b < nb; b++) {
            const float *v = row + b * QK;
            __m256 f[4], amax = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                f[j] = _mm256_loadu_ps(v + 8 * j);
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, f[j]));
            }
            __m128 a = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            a = _mm_max_ps(a, _mm_movehl_ps(a, a));
            a = _mm_max_ss(a, _mm_movehdup_ps(a));
            const float top = _mm_cvtss_f32(a);
            const __m256 id = _mm256_set1_ps(top > 0.0f ? top_code / top : 0.0f);
            /* round to nearest even; packs interleave 128-bit lanes, the permutes restore the order */
            const __m256i q01 = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(f[0], id)), _mm256_cvtps_epi32(_mm256_mul_ps(f[1], id)));
            const __m256i q23 = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(f[2], id)), _mm256_cvtps_epi32(_mm256_mul_ps(f[3], id)));
            if (bits == 8) {
                const __m256i q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q01, q23), dwords);
                _mm256_storeu_si256((__m256i *)((int8_t *)xq + m * K + b * QK), _mm256_shuffle_epi8(q, bytes));
            } else {
                int16_t *out = (int16_t *)xq + m * K + b * QK;
                _mm256_storeu_si256((__m256i *)out, _mm256_permute4x64_epi64(q01, 0xD8));
                _mm256_storeu_si256((__m256i *)(out + 16), _mm256_permute4x64_epi64(q23, 0xD8));
            }
            xd[m * nb + b] = top / top_code;
        }
        for (int64_t g = 0; G > 0 && g < K / G; g++) {
            float s = 0.0f;
            if (bits == 8) {  /* the sum of what the products see, as llama.cpp's Q8_1 keeps it (see above) */
                for (int64_t b = g * G / QK; b < (g + 1) * G / QK; b++) {
                    int32_t codes = 0;
                    for (int j = 0; j < QK; j++) codes += ((const int8_t *)xq)[m * K + b * QK + j];
                    s += (float)codes * xd[m * nb + b];
                }
            } else {
                for (int64_t j = 0; j < G; j++) s += row[g * G + j];
            }
            xg[m * (K / G) + g] = s;
        }
    }
}

/* Scratch for the quantized activations, kept per calling thread and grown as needed (a malloc per product cost
 * microseconds at decode widths).  Returns NULL when memory runs out. */
static void *scratch(size_t bytes) {
    static __thread void *buffer = NULL;
    static __thread size_t size = 0;
    if (bytes > size) {
        void *grown = realloc(buffer, bytes);
        if (!grown) return NULL;
        buffer = grown, size = bytes;
    }
    return buffer;
}

/* 8 half-precision values as floats. */
static inline __m256 half8(const uint16_t *h) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)); }

/* The activation pair x[0], x[1] in every 32-bit lane. */
static inline __m256i pair(const int16_t *x) {
    int32_t v;
    memcpy(&v, x, sizeof v);
    return _mm256_set1_epi32(v);
}

/* Four int8 activations x[0..3] in every 32-bit lane. */
static inline __m256i quad(const int8_t *x) {
    int32_t v;
    memcpy(&v, x, sizeof v);
    return _mm256_set1_epi32(v);
}

/* The tile's 8 sums of activation row r to y (only the first `cols` of them: the last tile of an N not divisible by 8). */
static inline void store(float *y, __m256 v, int64_t cols) {
    if (cols == 8) {
        _mm256_storeu_ps(y, v);
    } else {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        memcpy(y, tmp, sizeof(float) * cols);
    }
}

/* VNNI for 256-bit vectors: AVX-VNNI (Intel's client cores since Alder Lake, which have no AVX-512), or AVX-512 VNNI
 * with VL.  vpdpwssd / vpdpbusd fuse each multiply-add with its accumulation into int32, and a fused instruction waits
 * ~5 cycles for the previous one into the same sum: CHAINS(R) independent sums per activation row keep the multipliers
 * busy (four for a lone row; with more rows two each suffice and fit the 16 registers).  Without VNNI, madd results
 * are summed as a tree into one sum per row (measured faster there than chains of madd and add). */
#if defined(__AVXVNNI__)
#define VNNI256 1
#define DPWSSD _mm256_dpwssd_avx_epi32
#define DPBUSD _mm256_dpbusd_avx_epi32
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define VNNI256 1
#define DPWSSD _mm256_dpwssd_epi32
#define DPBUSD _mm256_dpbusd_epi32
#else
#define VNNI256 0
#endif
#define CHAINS(R) (!VNNI256 ? 1 : (R) == 1 ? 4 : 2)

/* One tile of the int4 product for R (1..ROWS) activation rows.  BPG is the blocks per group as a constant (1, 2, 4;
 * 0 = any, read from G), so finding a block's group is a shift.  BITS is the activations' width as a constant:
 *   16 (w4a16): shifts and masks leave each 32-bit lane's pair of codes as two int16, times an activation pair
 *       (vpdpwssd, or madd), four vectors per run of 8 inputs;
 *   8 (w4a8, llama.cpp's Q4_1 x Q8_1): a mask and a shift leave each lane's four codes as bytes (inputs 0,4,1,5 and
 *       2,6,3,7 of a run of 8: the order quantize_rows stores int8 activations in), times four int8 activations: with
 *       VNNI vpdpbusd sums them into int32 at once; else maddubs multiplies 32 of them per instruction, and as a block's
 *       8 maddubs sums stay below 8 * 2 * 15 * 127 = 30480 they add up in int16 and widen once per block (madd by ones).
 * Integer sums are exact either way.  The float steps per block (integer sum times weight scale times activation
 * scale, then + low * sum(x) per group) are the same for both widths and every build. */
static inline __attribute__((always_inline)) void int4_tile(const uint32_t *w, const uint16_t *t, const void *xq,
                                                           const float *xd, const float *xg, int64_t K, int64_t G,
                                                           float *y, int64_t N, int64_t cols, const int R, const int BPG,
                                                           const int BITS) {
    const int64_t nb = K / QK, ng = K / G, bpg = BPG ? BPG : G / QK;
    const int chains = CHAINS(R);
    const __m256i mask = _mm256_set1_epi32(BITS == 8 ? 0x0F0F0F0F : 0x000F000F);
    __m256 acc[ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i sum[4][ROWS];
        for (int i = 0; i < chains; i++)
            for (int r = 0; r < R; r++) sum[i][r] = _mm256_setzero_si256();
        for (int c = 0; c < QK / 8; c++) {
            const __m256i words = _mm256_loadu_si256((const __m256i *)(w + (b * (QK / 8) + c) * 8));
            _mm_prefetch((const char *)(w + (b * (QK / 8) + c) * 8 + AHEAD), _MM_HINT_T0);
            if (BITS == 8) {
                const __m256i lo = _mm256_and_si256(words, mask), hi = _mm256_and_si256(_mm256_srli_epi32(words, 4), mask);
                for (int r = 0; r < R; r++) {
                    const int8_t *x = (const int8_t *)xq + r * K + b * QK + c * 8;
#if VNNI256
                    sum[c % chains][r] = DPBUSD(DPBUSD(sum[c % chains][r], lo, quad(x)), hi, quad(x + 4));
#else
                    sum[0][r] = _mm256_add_epi16(sum[0][r], _mm256_add_epi16(_mm256_maddubs_epi16(lo, quad(x)), _mm256_maddubs_epi16(hi, quad(x + 4))));
#endif
                }
                continue;
            }
            /* the top nibble of each int16 needs no mask */
            const __m256i v[4] = {_mm256_and_si256(words, mask), _mm256_and_si256(_mm256_srli_epi32(words, 4), mask),
                                  _mm256_and_si256(_mm256_srli_epi32(words, 8), mask), _mm256_srli_epi16(words, 12)};
            for (int r = 0; r < R; r++) {
                const int16_t *x = (const int16_t *)xq + r * K + b * QK + c * 8;
#if VNNI256
                for (int i = 0; i < 4; i++) sum[i % chains][r] = DPWSSD(sum[i % chains][r], v[i], pair(x + 2 * i));
#else
                sum[0][r] = _mm256_add_epi32(sum[0][r], _mm256_add_epi32(_mm256_add_epi32(_mm256_madd_epi16(v[0], pair(x)), _mm256_madd_epi16(v[1], pair(x + 2))),
                                                                         _mm256_add_epi32(_mm256_madd_epi16(v[2], pair(x + 4)), _mm256_madd_epi16(v[3], pair(x + 6)))));
#endif
            }
        }
        const __m256 scale = half8(t + (b / bpg) * 16);
        for (int r = 0; r < R; r++) {
            __m256i total = sum[0][r];
            for (int i = 1; i < chains; i++) total = _mm256_add_epi32(total, sum[i][r]);
#if !VNNI256
            if (BITS == 8) total = _mm256_madd_epi16(total, _mm256_set1_epi16(1));  /* int16 sums, widened */
#endif
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(scale, _mm256_set1_ps(xd[r * nb + b])), acc[r]);
        }
    }
    for (int64_t g = 0; g < ng; g++) {  /* + low * sum(x) over each group */
        const __m256 low = half8(t + g * 16 + 8);
        for (int r = 0; r < R; r++) acc[r] = _mm256_fmadd_ps(low, _mm256_set1_ps(xg[r * ng + g]), acc[r]);
    }
    for (int r = 0; r < R; r++) store(y + r * N, acc[r], cols);
}

#ifdef __AVX512VNNI__
/* 8 halves from a and 8 from b as one vector of floats. */
static inline __m512 join(const uint16_t *a, const uint16_t *b) {
    return _mm512_cvtph_ps(_mm256_set_m128i(_mm_loadu_si128((const __m128i *)b), _mm_loadu_si128((const __m128i *)a)));
}

/* Two neighbouring full tiles of the int4 product (16 output rows) with AVX-512 VNNI, as int4_tile computes each:
 * vpdpwssd (BITS 16) and vpdpbusd (BITS 8) fuse each multiply-add with its accumulation in int32. */
static inline __attribute__((always_inline)) void int4_tiles(const uint32_t *w, const uint16_t *t, const void *xq,
                                                            const float *xd, const float *xg, int64_t K, int64_t G,
                                                            float *y, int64_t N, const int R, const int BPG, const int BITS) {
    const int64_t nb = K / QK, ng = K / G, bpg = BPG ? BPG : G / QK;
    const uint32_t *w1 = w + K;  /* the next tile */
    const uint16_t *t1 = t + ng * 16;
    const __m512i mask = _mm512_set1_epi32(BITS == 8 ? 0x0F0F0F0F : 0x000F000F);
    __m512 acc[ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i sum[4][ROWS];  /* independent chains per row (one chain stalls on the instruction's latency) */
        for (int i = 0; i < 4; i++)
            for (int r = 0; r < R; r++) sum[i][r] = _mm512_setzero_si512();
        for (int c = 0; c < QK / 8; c++) {
            const int64_t at = (b * (QK / 8) + c) * 8;
            _mm_prefetch((const char *)(w + at + AHEAD), _MM_HINT_T0);
            _mm_prefetch((const char *)(w1 + at + AHEAD), _MM_HINT_T0);
            const __m512i words = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(w + at))),
                                                     _mm256_loadu_si256((const __m256i *)(w1 + at)), 1);
            if (BITS == 8) {
                const __m512i lo = _mm512_and_si512(words, mask), hi = _mm512_and_si512(_mm512_srli_epi32(words, 4), mask);
                for (int r = 0; r < R; r++) {
                    int32_t p[2];
                    memcpy(p, (const int8_t *)xq + r * K + b * QK + c * 8, sizeof p);
                    sum[0][r] = _mm512_dpbusd_epi32(sum[0][r], lo, _mm512_set1_epi32(p[0]));
                    sum[1][r] = _mm512_dpbusd_epi32(sum[1][r], hi, _mm512_set1_epi32(p[1]));
                }
                continue;
            }
            const __m512i v0 = _mm512_and_si512(words, mask), v1 = _mm512_and_si512(_mm512_srli_epi32(words, 4), mask),
                          v2 = _mm512_and_si512(_mm512_srli_epi32(words, 8), mask),
                          v3 = _mm512_and_si512(_mm512_srli_epi32(words, 12), mask);
            for (int r = 0; r < R; r++) {
                int32_t p[4];
                memcpy(p, (const int16_t *)xq + r * K + b * QK + c * 8, sizeof p);
                sum[0][r] = _mm512_dpwssd_epi32(sum[0][r], v0, _mm512_set1_epi32(p[0]));
                sum[1][r] = _mm512_dpwssd_epi32(sum[1][r], v1, _mm512_set1_epi32(p[1]));
                sum[2][r] = _mm512_dpwssd_epi32(sum[2][r], v2, _mm512_set1_epi32(p[2]));
                sum[3][r] = _mm512_dpwssd_epi32(sum[3][r], v3, _mm512_set1_epi32(p[3]));
            }
        }
        const __m512 scale = join(t + (b / bpg) * 16, t1 + (b / bpg) * 16);
        for (int r = 0; r < R; r++) {
            const __m512i total = _mm512_add_epi32(_mm512_add_epi32(sum[0][r], sum[1][r]), _mm512_add_epi32(sum[2][r], sum[3][r]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(scale, _mm512_set1_ps(xd[r * nb + b])), acc[r]);
        }
    }
    for (int64_t g = 0; g < ng; g++) {
        const __m512 low = join(t + g * 16 + 8, t1 + g * 16 + 8);
        for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(low, _mm512_set1_ps(xg[r * ng + g]), acc[r]);
    }
    for (int r = 0; r < R; r++) _mm512_storeu_ps(y + r * N, acc[r]);
}
#define WIDE 2 /* tiles a thread takes at once */
#else
#define WIDE 1
#endif

#define INT4_BPG(F, R, BITS, ...) switch (bpg) { \
        case 1: F(w, t, xr, dr, gr, K, G, yr, N, __VA_ARGS__ R, 1, BITS); break; \
        case 2: F(w, t, xr, dr, gr, K, G, yr, N, __VA_ARGS__ R, 2, BITS); break; \
        case 4: F(w, t, xr, dr, gr, K, G, yr, N, __VA_ARGS__ R, 4, BITS); break; \
        default: F(w, t, xr, dr, gr, K, G, yr, N, __VA_ARGS__ R, 0, BITS); }
/* constant row counts: the compiler keeps the sums in registers */
#define INT4_ROWS(F, BITS, ...) switch (M - m < ROWS ? M - m : ROWS) { \
        case 4: INT4_BPG(F, 4, BITS, __VA_ARGS__) break; \
        case 3: INT4_BPG(F, 3, BITS, __VA_ARGS__) break; \
        case 2: INT4_BPG(F, 2, BITS, __VA_ARGS__) break; \
        default: INT4_BPG(F, 1, BITS, __VA_ARGS__) }

/* bits: 16 (int16 activations, w4a16) or 8 (int8 activations, w4a8). */
int puyu_int4_gemm(const float *x, int64_t M, int64_t K, const uint32_t *codes, const uint16_t *table, int64_t N, int64_t G,
                   int bits, float *y, int threads) {
    if (K % QK || G % QK || K % G) return 1;
    if (bits != 8 && bits != 16) return 3;
    const int64_t nb = K / QK, ng = K / G, bpg = G / QK, tiles = (N + 7) / 8;
    char *room = scratch((bits / 8 * K + sizeof(float) * (nb + ng)) * M);
    if (!room) return 2;
    float *xd = (float *)(room + bits / 8 * M * K), *xg = xd + M * nb;
    quantize_rows(x, M, K, G, bits, room, xd, xg);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t step = 0; step < (tiles + WIDE - 1) / WIDE; step++) {
        for (int64_t tile = step * WIDE; tile < (step + 1) * WIDE && tile < tiles; tile++) {
            const uint32_t *w = codes + tile * K;
            const uint16_t *t = table + tile * ng * 16;
            const int64_t cols = N - tile * 8 < 8 ? N - tile * 8 : 8;
            const int both = WIDE == 2 && tile % 2 == 0 && N - tile * 8 >= 16;  /* this tile and the next, full */
            for (int64_t m = 0; m < M; m += ROWS) {
                const char *xr = room + bits / 8 * m * K;
                const float *dr = xd + m * nb, *gr = xg + m * ng;
                float *yr = y + m * N + tile * 8;
#ifdef __AVX512VNNI__
                if (both && bits == 8) { INT4_ROWS(int4_tiles, 8, ) continue; }
                if (both) { INT4_ROWS(int4_tiles, 16, ) continue; }
#endif
                if (bits == 8) { INT4_ROWS(int4_tile, 8, cols,) continue; }
                INT4_ROWS(int4_tile, 16, cols,)
            }
            tile += both;
        }
    }
    return 0;
}

/* One tile of the int8 product for R (1..ROWS) activation rows. */
static inline __attribute__((always_inline)) void int8_tile(const int8_t *w, const float *scale, const int16_t *xq,
                                                           const float *xd, int64_t K, float *y, int64_t N, int64_t cols,
                                                           const int R) {
    const int64_t nb = K / QK;
    const int chains = CHAINS(R);
    __m256 acc[ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i sum[4][ROWS];
        for (int i = 0; i < chains; i++)
            for (int r = 0; r < R; r++) sum[i][r] = _mm256_setzero_si256();
        for (int p = 0; p < QK / 2; p += 2) {  /* two input pairs of 8 rows: 32 bytes */
            const int8_t *wp = w + (b * QK + 2 * p) * 8;
            _mm_prefetch((const char *)(wp + 4 * AHEAD), _MM_HINT_T0);
            const __m256i v0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wp)),
                          v1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wp + 16)));
            for (int r = 0; r < R; r++) {
                const int16_t *x = xq + r * K + b * QK + 2 * p;
#if VNNI256
                const int i = p / 2 % (chains / 2) * 2;
                sum[i][r] = DPWSSD(sum[i][r], v0, pair(x));
                sum[i + 1][r] = DPWSSD(sum[i + 1][r], v1, pair(x + 2));
#else
                sum[0][r] = _mm256_add_epi32(sum[0][r], _mm256_add_epi32(_mm256_madd_epi16(v0, pair(x)), _mm256_madd_epi16(v1, pair(x + 2))));
#endif
            }
        }
        for (int r = 0; r < R; r++) {
            __m256i total = sum[0][r];
            for (int i = 1; i < chains; i++) total = _mm256_add_epi32(total, sum[i][r]);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(xd[r * nb + b]), acc[r]);
        }
    }
    const __m256 s = _mm256_loadu_ps(scale);
    for (int r = 0; r < R; r++) store(y + r * N, _mm256_mul_ps(acc[r], s), cols);
}

#ifdef __AVX512VNNI__
/* Two neighbouring full tiles of the int8 product (16 output rows) with AVX-512 VNNI, as int8_tile computes each. */
static inline __attribute__((always_inline)) void int8_tiles(const int8_t *w, const float *scale, const int16_t *xq,
                                                            const float *xd, int64_t K, float *y, int64_t N, const int R) {
    const int64_t nb = K / QK;
    const int8_t *w1 = w + 8 * K;  /* the next tile */
    __m512 acc[ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i sum[4][ROWS];  /* four independent chains of vpdpwssd */
        for (int i = 0; i < 4; i++)
            for (int r = 0; r < R; r++) sum[i][r] = _mm512_setzero_si512();
        for (int p = 0; p < QK / 2; p += 4) {  /* four input pairs of 16 rows */
            const int64_t at = (b * QK + 2 * p) * 8;
            _mm_prefetch((const char *)(w + at + 4 * AHEAD), _MM_HINT_T0);
            _mm_prefetch((const char *)(w1 + at + 4 * AHEAD), _MM_HINT_T0);
            for (int i = 0; i < 4; i++) {
                const __m512i v = _mm512_cvtepi8_epi16(_mm256_set_m128i(_mm_loadu_si128((const __m128i *)(w1 + at + 16 * i)),
                                                                        _mm_loadu_si128((const __m128i *)(w + at + 16 * i))));
                for (int r = 0; r < R; r++) {
                    int32_t x;
                    memcpy(&x, xq + r * K + b * QK + 2 * (p + i), sizeof x);
                    sum[i][r] = _mm512_dpwssd_epi32(sum[i][r], v, _mm512_set1_epi32(x));
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const __m512i total = _mm512_add_epi32(_mm512_add_epi32(sum[0][r], sum[1][r]), _mm512_add_epi32(sum[2][r], sum[3][r]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_set1_ps(xd[r * nb + b]), acc[r]);
        }
    }
    const __m512 s = _mm512_loadu_ps(scale);
    for (int r = 0; r < R; r++) _mm512_storeu_ps(y + r * N, _mm512_mul_ps(acc[r], s));
}
#endif

int puyu_int8_gemm(const float *x, int64_t M, int64_t K, const int8_t *codes, const float *scale, int64_t N, float *y,
                   int threads) {
    if (K % QK) return 1;
    const int64_t nb = K / QK, tiles = (N + 7) / 8;
    char *room = scratch((sizeof(int16_t) * K + sizeof(float) * nb) * M);
    if (!room) return 2;
    int16_t *xq = (int16_t *)room;
    float *xd = (float *)(xq + M * K);
    quantize_rows(x, M, K, 0, 16, xq, xd, NULL);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t step = 0; step < (tiles + WIDE - 1) / WIDE; step++) {
        for (int64_t tile = step * WIDE; tile < (step + 1) * WIDE && tile < tiles; tile++) {
            const int8_t *w = codes + tile * 8 * K;
            const float *s = scale + tile * 8;
            const int64_t cols = N - tile * 8 < 8 ? N - tile * 8 : 8;
            const int both = WIDE == 2 && tile % 2 == 0 && N - tile * 8 >= 16;  /* this tile and the next, full */
            for (int64_t m = 0; m < M; m += ROWS) {
                const int16_t *xr = xq + m * K;
                const float *dr = xd + m * nb;
                float *yr = y + m * N + tile * 8;
                const int rows = M - m < ROWS ? (int)(M - m) : ROWS;
#ifdef __AVX512VNNI__
                if (both) {
                    switch (rows) {
                        case 4: int8_tiles(w, s, xr, dr, K, yr, N, 4); break;
                        case 3: int8_tiles(w, s, xr, dr, K, yr, N, 3); break;
                        case 2: int8_tiles(w, s, xr, dr, K, yr, N, 2); break;
                        default: int8_tiles(w, s, xr, dr, K, yr, N, 1);
                    }
                    continue;
                }
#endif
                switch (rows) {
                    case 4: int8_tile(w, s, xr, dr, K, yr, N, cols, 4); break;
                    case 3: int8_tile(w, s, xr, dr, K, yr, N, cols, 3); break;
                    case 2: int8_tile(w, s, xr, dr, K, yr, N, cols, 2); break;
                    default: int8_tile(w, s, xr, dr, K, yr, N, cols, 1);
                }
            }
            tile += both;
        }
    }
    return 0;
}
