#include "tidepool_vector.h"

#if defined(__x86_64__) && defined(__clang__)
#include <immintrin.h>

#define KERNEL __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16")))
#define INLINE KERNEL __attribute__((always_inline)) static inline

int tpvector_supports(tpvector_format format) {
    __builtin_cpu_init();
    int base = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    switch (format) {
    case TPVECTOR_FLOAT16: return base;
    case TPVECTOR_BFLOAT16: return base && __builtin_cpu_supports("avx512bf16");
    }
    return 0;
}

int tpvector_supports_x86_64_v3(void) {
    __builtin_cpu_init();
    /* The compiler's own check of the whole level (AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE, and
     * the OS saving the ymm state). */
    return __builtin_cpu_supports("x86-64-v3");
}

/* vcvtneps2bf16 rounds as BFloat16(Float) does (NaN quieted, keeping its upper bits) except
 * that it reads subnormal inputs as zero: those vectors are redone with the integer rounding. */
INLINE __m256i round_bfloat16(__m512 v) {
    __m256i rounded = (__m256i)_mm512_cvtneps_pbh(v);
    __mmask16 subnormal = _mm512_fpclass_ps_mask(v, 0x20);
    if (__builtin_expect(subnormal != 0, 0)) {
        __m512i bits = _mm512_castps_si512(v);
        __m512i lowestKept = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        __m512i biased = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lowestKept);
        rounded = _mm256_mask_blend_epi16(subnormal, rounded, _mm512_cvtepi32_epi16(_mm512_srli_epi32(biased, 16)));
    }
    return rounded;
}

INLINE __m256i round_to(tpvector_format format, __m512 v) {
    return format == TPVECTOR_BFLOAT16 ? round_bfloat16(v) : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

/* The start of a window's sum, added last, as the Swift `mean` adds it (MLX's rule): +0, which
 * changes no sum but a -0 (a fold of -0s alone), to +0; -0, which changes nothing, for windows
 * of one element (a scale of 1), which MLX passes through. */
INLINE __m512 start_of_sum(float scale) { return _mm512_set1_ps(scale == 1.0f ? -0.0f : 0.0f); }

INLINE __m512 scaled(__m512 sum, __m512 start, __m512 factor) { return _mm512_mul_ps(_mm512_add_ps(sum, start), factor); }

/* Lanes l of a 16-lane vector with lower <= l < upper. */
INLINE __mmask16 lanes_between(ptrdiff_t lower, ptrdiff_t upper) {
    if (lower < 0) lower = 0;
    if (upper > 16) upper = 16;
    if (upper <= lower) return 0;
    return (__mmask16)(((1u << upper) - 1) & ~((1u << lower) - 1));
}

/* Sixteen outputs from taps `step` apart from p, each tap's lanes outside `loaded` reading 0. */
INLINE __m512 fold_masked(const float *p, ptrdiff_t step, const int taps, const __mmask16 *loaded) {
    __m512 sum = _mm512_maskz_loadu_ps(loaded[0], p);
    for (int k = 1; k < taps; k++) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(loaded[k], p + k * step));
    return sum;
}

INLINE void finish_runs(tpvector_format format, uint16_t *restrict out, size_t length, const float *const *sources,
                        const int count, float scale) {
    const __m512 factor = _mm512_set1_ps(scale), start = start_of_sum(scale);
    const float *s[6];
    for (int k = 0; k < count; k++) s[k] = sources[k];
    size_t j = 0;
    for (; j + 16 <= length; j += 16) {
        __m512 sum = _mm512_loadu_ps(s[0] + j);
        for (int k = 1; k < count; k++) sum = _mm512_add_ps(sum, _mm512_loadu_ps(s[k] + j));
        _mm256_storeu_si256((__m256i *)(out + j), round_to(format, scaled(sum, start, factor)));
    }
    if (j < length) {
        __mmask16 tail = lanes_between(0, (ptrdiff_t)(length - j));
        __m512 sum = _mm512_maskz_loadu_ps(tail, s[0] + j);
        for (int k = 1; k < count; k++) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(tail, s[k] + j));
        _mm256_mask_storeu_epi16(out + j, tail, round_to(format, scaled(sum, start, factor)));
    }
}

/* The masks of one vector of a row's outputs whose taps may leave the row. */
typedef struct {
    __mmask16 stored;
    __mmask16 loaded[6];
} edge_vector;

INLINE void edge_masks(edge_vector *e, ptrdiff_t j, ptrdiff_t length, ptrdiff_t first, ptrdiff_t step, int taps) {
    e->stored = lanes_between(0, length - j);
    for (int k = 0; k < taps; k++) {
        ptrdiff_t offset = j + first + k * step;
        e->loaded[k] = lanes_between(-offset, length - offset) & e->stored;
    }
}

INLINE void finish_edge(tpvector_format format, uint16_t *out, const float *p, const edge_vector *e, ptrdiff_t step,
                        const int taps, __m512 start, __m512 factor) {
    __m512 sum = fold_masked(p, step, taps, e->loaded);
    _mm256_mask_storeu_epi16(out, e->stored, round_to(format, scaled(sum, start, factor)));
}

INLINE void finish_rows(tpvector_format format, uint16_t *restrict out, const float *source, size_t rows, ptrdiff_t length,
                        ptrdiff_t first, ptrdiff_t step, const int taps, float scale) {
    const __m512 factor = _mm512_set1_ps(scale), start = start_of_sum(scale);
    /* Outputs [lower, upper) have every tap in the row; vectors [whole0, whole1), at multiples
     * of 16, hold only such outputs. The rest have their masks worked out once for all rows. */
    ptrdiff_t lower = first < 0 ? -first : 0, upper = length - first - (taps - 1) * step;
    ptrdiff_t vectors = (length + 15) / 16;
    ptrdiff_t whole0 = (lower + 15) / 16, whole1 = upper < 16 ? 0 : upper / 16;
    if (whole0 > vectors) whole0 = vectors;
    if (whole1 > vectors) whole1 = vectors;
    if (whole1 < whole0) whole1 = whole0;
    edge_vector head[4], tail[4];
    if (whole0 > 4 || vectors - whole1 > 4) {
        /* Rows short beside their windows: each vector's masks as it comes. */
        for (size_t r = 0; r < rows; r++)
            for (ptrdiff_t i = 0; i < vectors; i++) {
                edge_vector e;
                edge_masks(&e, 16 * i, length, first, step, taps);
                finish_edge(format, out + r * length + 16 * i, source + r * length + first + 16 * i, &e, step, taps, start, factor);
            }
        return;
    }
    for (ptrdiff_t i = 0; i < whole0; i++) edge_masks(&head[i], 16 * i, length, first, step, taps);
    for (ptrdiff_t i = whole1; i < vectors; i++) edge_masks(&tail[i - whole1], 16 * i, length, first, step, taps);
    for (size_t r = 0; r < rows; r++) {
        const float *row = source + r * length + first;
        uint16_t *o = out + r * length;
        for (ptrdiff_t i = 0; i < whole0; i++) finish_edge(format, o + 16 * i, row + 16 * i, &head[i], step, taps, start, factor);
        for (ptrdiff_t i = whole0; i < whole1; i++) {
            const float *p = row + 16 * i;
            __m512 sum = _mm512_loadu_ps(p);
            for (int k = 1; k < taps; k++) sum = _mm512_add_ps(sum, _mm512_loadu_ps(p + k * step));
            _mm256_storeu_si256((__m256i *)(o + 16 * i), round_to(format, scaled(sum, start, factor)));
        }
        for (ptrdiff_t i = whole1; i < vectors; i++) finish_edge(format, o + 16 * i, row + 16 * i, &tail[i - whole1], step, taps, start, factor);
    }
}

/* One copy per format and tap count, so each loop is unrolled over its taps. */
#define FOR_EACH_COUNT(format, count, CALL)                                                                            \
    switch (count) {                                                                                                   \
    case 1: CALL(format, 1); break;                                                                                    \
    case 2: CALL(format, 2); break;                                                                                    \
    case 3: CALL(format, 3); break;                                                                                    \
    case 4: CALL(format, 4); break;                                                                                    \
    case 5: CALL(format, 5); break;                                                                                    \
    default: CALL(format, 6); break;                                                                                   \
    }

#define RUNS(format, count) finish_runs(format, out, length, sources, count, scale)
#define ROWS(format, taps) finish_rows(format, out, source, rows, length, first, step, taps, scale)

KERNEL void tpvector_finish_runs(tpvector_format format, uint16_t *out, size_t length, const float *const *sources, int count,
                                 float scale) {
    if (format == TPVECTOR_BFLOAT16) {
        FOR_EACH_COUNT(TPVECTOR_BFLOAT16, count, RUNS)
    } else {
        FOR_EACH_COUNT(TPVECTOR_FLOAT16, count, RUNS)
    }
}

KERNEL void tpvector_finish_rows(tpvector_format format, uint16_t *out, const float *source, size_t rows, ptrdiff_t length,
                                 ptrdiff_t first, ptrdiff_t step, int taps, float scale) {
    if (format == TPVECTOR_BFLOAT16) {
        FOR_EACH_COUNT(TPVECTOR_BFLOAT16, taps, ROWS)
    } else {
        FOR_EACH_COUNT(TPVECTOR_FLOAT16, taps, ROWS)
    }
}

#else
#include <stdlib.h>

int tpvector_supports_x86_64_v3(void) { return 0; }

int tpvector_supports(tpvector_format format) {
    (void)format;
    return 0;
}

void tpvector_finish_runs(tpvector_format format, uint16_t *out, size_t length, const float *const *sources, int count,
                          float scale) {
    (void)format, (void)out, (void)length, (void)sources, (void)count, (void)scale;
    abort();
}

void tpvector_finish_rows(tpvector_format format, uint16_t *out, const float *source, size_t rows, ptrdiff_t length,
                          ptrdiff_t first, ptrdiff_t step, int taps, float scale) {
    (void)format, (void)out, (void)source, (void)rows, (void)length, (void)first, (void)step, (void)taps, (void)scale;
    abort();
}
#endif
