/* Vector helpers the kernels share (AVX2 + FMA): exp on 8 lanes, horizontal sums, bf16 <-> float32. */
#ifndef PUYU_VECTOR_MATH_H
#define PUYU_VECTOR_MATH_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* exp(x) on 8 lanes for x <= 0 (scores minus their maximum); below -87 it returns 2^-126 * p instead of 0. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  /* x - n ln2, ln2 in two parts */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* s[j] = exp(s[j] - top) in place for j < n (top: their maximum); returns their sum, the last n % 8 through the same
 * polynomial in a padded vector. */
static inline float exp_shifted(float *s, int64_t n, float top) {
    const __m256 top8 = _mm256_set1_ps(top);
    __m256 sum8 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), top8));
        _mm256_storeu_ps(s + j, e);
        sum8 = _mm256_add_ps(sum8, e);
    }
    float sum = hsum(sum8);
    if (j < n) {
        float tail[8], e[8];
        for (int i = 0; i < 8; i++) tail[i] = j + i < n ? s[j + i] - top : -INFINITY;
        _mm256_storeu_ps(e, exp8(_mm256_loadu_ps(tail)));
        for (int64_t i = j; i < n; i++) s[i] = e[i - j], sum += e[i - j];
    }
    return sum;
}

/* 8 bf16 values (the upper halves of float32) as float32. */
static inline __m256 load_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* 8 float32 values stored as bf16, rounded to nearest even as torch rounds them (NaN stays NaN). */
static inline void store_bf16x8(uint16_t *p, __m256 v) {
    __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    u = _mm256_blendv_epi8(u, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(u, u), 0x08);
    _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(packed));
}

/* One float32 value as bf16, rounded as store_bf16x8 rounds. */
static inline uint16_t bf16_of(float x) {
    union { float f; uint32_t u; } v = {x};
    if (x != x) return 0x7fc0;
    return (uint16_t)((v.u + 0x7fff + ((v.u >> 16) & 1)) >> 16);
}

static inline float float_of_bf16(uint16_t x) {
    union { uint32_t u; float f; } v = {(uint32_t)x << 16};
    return v.f;
}
/* Up to 8 values of p from index i (float32, or bf16 when bf16 is set) as float32; zeros past `count`. */
static inline __m256 load_floats(const void *p, int bf16, int64_t i, int64_t count) {
    if (count >= 8) return bf16 ? load_bf16x8((const uint16_t *)p + i) : _mm256_loadu_ps((const float *)p + i);
    float lanes[8] = {0};
    for (int64_t k = 0; k < count; k++) lanes[k] = bf16 ? float_of_bf16(((const uint16_t *)p)[i + k]) : ((const float *)p)[i + k];
    return _mm256_loadu_ps(lanes);
}

/* The first `count` (up to 8) lanes of v into p from index i, as float32 or (bf16 set) rounded to bf16. */
static inline void store_floats(void *p, int bf16, int64_t i, int64_t count, __m256 v) {
    if (count >= 8) {
        if (bf16)
            store_bf16x8((uint16_t *)p + i, v);
        else
            _mm256_storeu_ps((float *)p + i, v);
        return;
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    for (int64_t k = 0; k < count; k++) {
        if (bf16)
            ((uint16_t *)p)[i + k] = bf16_of(lanes[k]);
        else
            ((float *)p)[i + k] = lanes[k];
    }
}

/* v rounded to bf16 (as torch rounds, NaN kept) and back to float32, in registers. */
static inline __m256 round_bf16(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))),
                                       _mm256_set1_epi32((int)0xffff0000u));
    return _mm256_blendv_ps(_mm256_castsi256_ps(r), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}
#endif
