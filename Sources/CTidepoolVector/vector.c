#include "tidepool_vector.h"

#include <string.h>

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

#define AVX2 __attribute__((target("avx2")))
#define AVX2_INLINE AVX2 __attribute__((always_inline)) static inline

/* Units of the groups from `g` on, past the whole vectors, one by one: copies of a constant
 * size, which compile to a load and a store (a call of memcpy per unit took longer than the
 * vectors' part of a chunk of 1-byte units). */
static void split_tail(const uint8_t *in, size_t unit, size_t step, size_t g, size_t groups, size_t pitch, uint8_t *out) {
#define SPLIT_TAIL(size)                                                                                  \
    for (; g < groups; g++) {                                                                             \
        for (size_t r = 0; r < step; r++) memcpy(out + r * pitch + g * (size), in + (step * g + r) * (size), (size)); \
    }
    switch (unit) {
    case 1: SPLIT_TAIL(1) break;
    case 2: SPLIT_TAIL(2) break;
    default: SPLIT_TAIL(4) break;
    }
#undef SPLIT_TAIL
}

/* Step 4: 128 bytes a step. Within each 128-bit lane, pshufb orders the units of its groups
 * phase by phase (dword r holds phase r of the lane's 16 / (4 * unit) groups; 4-byte units need
 * no reordering); a 4x4 transpose of dwords gathers each phase; lane 0 then holds the even
 * blocks of groups and lane 1 the odd, which vpermd interleaves. */
AVX2_INLINE void split_by_four(const uint8_t *in, size_t unit, size_t groups, size_t pitch, uint8_t *out) {
    const __m256i bytes = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                           0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i halves = _mm256_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15,
                                            0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const size_t per = 32 / unit;
    size_t g = 0;
    for (; g + per <= groups; g += per) {
        const uint8_t *p = in + g * 4 * unit;
        __m256i v0 = _mm256_loadu_si256((const __m256i *)p), v1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        __m256i v2 = _mm256_loadu_si256((const __m256i *)(p + 64)), v3 = _mm256_loadu_si256((const __m256i *)(p + 96));
        if (unit < 4) {
            const __m256i mask = unit == 1 ? bytes : halves;
            v0 = _mm256_shuffle_epi8(v0, mask), v1 = _mm256_shuffle_epi8(v1, mask);
            v2 = _mm256_shuffle_epi8(v2, mask), v3 = _mm256_shuffle_epi8(v3, mask);
        }
        const __m256i t0 = _mm256_unpacklo_epi32(v0, v1), t1 = _mm256_unpackhi_epi32(v0, v1);
        const __m256i t2 = _mm256_unpacklo_epi32(v2, v3), t3 = _mm256_unpackhi_epi32(v2, v3);
        uint8_t *q = out + g * unit;
        _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(_mm256_unpacklo_epi64(t0, t2), order));
        _mm256_storeu_si256((__m256i *)(q + pitch), _mm256_permutevar8x32_epi32(_mm256_unpackhi_epi64(t0, t2), order));
        _mm256_storeu_si256((__m256i *)(q + 2 * pitch), _mm256_permutevar8x32_epi32(_mm256_unpacklo_epi64(t1, t3), order));
        _mm256_storeu_si256((__m256i *)(q + 3 * pitch), _mm256_permutevar8x32_epi32(_mm256_unpackhi_epi64(t1, t3), order));
    }
    split_tail(in, unit, 4, g, groups, pitch, out);
}

/* Eight vectors of 16-bit units transposed within their lanes: afterwards unit r of lane L of
 * v[i] is in lane L of v[r] at place i. */
AVX2_INLINE void transpose_halves(__m256i v[8]) {
    __m256i a[8], b[8];
    for (int i = 0; i < 4; i++) {
        a[2 * i] = _mm256_unpacklo_epi16(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm256_unpackhi_epi16(v[2 * i], v[2 * i + 1]);
    }
    /* b[0..3]: units 0-1, 2-3, 4-5, 6-7 of vectors 0-3; b[4..7] of vectors 4-7. */
    for (int h = 0; h < 2; h++) {
        b[4 * h] = _mm256_unpacklo_epi32(a[4 * h], a[4 * h + 2]);
        b[4 * h + 1] = _mm256_unpackhi_epi32(a[4 * h], a[4 * h + 2]);
        b[4 * h + 2] = _mm256_unpacklo_epi32(a[4 * h + 1], a[4 * h + 3]);
        b[4 * h + 3] = _mm256_unpackhi_epi32(a[4 * h + 1], a[4 * h + 3]);
    }
    for (int i = 0; i < 4; i++) {
        v[2 * i] = _mm256_unpacklo_epi64(b[i], b[i + 4]);
        v[2 * i + 1] = _mm256_unpackhi_epi64(b[i], b[i + 4]);
    }
}

/* 2-byte units at steps 5 to 16. A group's units are read as a run of 16 or 32 bytes from its
 * first (a step reads no further than its groups' end: the groups past that go one by one).
 * Steps up to 8: 16 groups a step, group i in lane 0 of vector i and group i + 8 in lane 1,
 * so that after the transpose vector r holds phase r of the sixteen in order. Steps 9 to 16: 8
 * groups a step, units 0-7 in lane 0 and 8-15 in lane 1, so that vector r holds phase r of the
 * eight in lane 0 and phase r + 8 in lane 1. */
AVX2_INLINE void split_halves(const uint8_t *in, size_t step, size_t groups, size_t pitch, uint8_t *out) {
    const size_t bytes = 2 * step;
    size_t g = 0;
    __m256i v[8];
    if (step <= 8) {
        for (; g + 16 <= groups && (g + 15) * bytes + 16 <= groups * bytes; g += 16) {
            const uint8_t *p = in + g * bytes;
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu2_m128i((const __m128i *)(p + (i + 8) * bytes), (const __m128i *)(p + i * bytes));
            transpose_halves(v);
            for (size_t r = 0; r < step; r++) _mm256_storeu_si256((__m256i *)(out + r * pitch + g * 2), v[r]);
        }
    } else {
        for (; g + 8 <= groups && (g + 7) * bytes + 32 <= groups * bytes; g += 8) {
            const uint8_t *p = in + g * bytes;
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_si256((const __m256i *)(p + i * bytes));
            transpose_halves(v);
            for (size_t r = 0; r < 8; r++) _mm_storeu_si128((__m128i *)(out + r * pitch + g * 2), _mm256_castsi256_si128(v[r]));
            for (size_t r = 8; r < step; r++) _mm_storeu_si128((__m128i *)(out + r * pitch + g * 2), _mm256_extracti128_si256(v[r - 8], 1));
        }
    }
    split_tail(in, 2, step, g, groups, pitch, out);
}

/* 4-byte units at steps 5 to 8: 8 groups (a run of 32 bytes each, read as for `split_halves`)
 * a step, an 8x8 transpose of dwords. */
AVX2_INLINE void split_words(const uint8_t *in, size_t step, size_t groups, size_t pitch, uint8_t *out) {
    const size_t bytes = 4 * step;
    size_t g = 0;
    for (; g + 8 <= groups && (g + 7) * bytes + 32 <= groups * bytes; g += 8) {
        const uint8_t *p = in + g * bytes;
        __m256i t[8], u[8];
        for (int i = 0; i < 4; i++) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(p + 2 * i * bytes));
            const __m256i y = _mm256_loadu_si256((const __m256i *)(p + (2 * i + 1) * bytes));
            t[2 * i] = _mm256_unpacklo_epi32(x, y);
            t[2 * i + 1] = _mm256_unpackhi_epi32(x, y);
        }
        /* u[0..3]: units (0, 4), (1, 5), (2, 6), (3, 7) of groups 0-3, lane by lane; u[4..7] of groups 4-7. */
        for (int h = 0; h < 2; h++) {
            u[4 * h] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
            u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
            u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
            u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
        }
        uint8_t *q = out + g * 4;
        for (size_t r = 0; r < 4; r++) {
            _mm256_storeu_si256((__m256i *)(q + r * pitch), _mm256_permute2x128_si256(u[r], u[r + 4], 0x20));
            if (r + 4 < step) _mm256_storeu_si256((__m256i *)(q + (r + 4) * pitch), _mm256_permute2x128_si256(u[r], u[r + 4], 0x31));
        }
    }
    split_tail(in, 4, step, g, groups, pitch, out);
}

/* 4-byte units at step 3: 8 groups (24 units in three vectors) a step. Phase r's units lie
 * at places r, r + 3, ... of the three: two blends take lane j from the vector holding one of
 * them there (each lane of the three vectors holds one unit of every phase in turn), and
 * vpermd puts the eight in order. */
AVX2_INLINE void split_thirds(const uint8_t *in, size_t groups, size_t pitch, uint8_t *out) {
    const __m256i order0 = _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5), order1 = _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6);
    const __m256i order2 = _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7);
    size_t g = 0;
    for (; g + 8 <= groups; g += 8) {
        const uint8_t *p = in + g * 12;
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)p), v1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        const __m256i v2 = _mm256_loadu_si256((const __m256i *)(p + 64));
        /* Lane j of phase 0's blend from v[j % 3], of phase 1's from v[(j + 2) % 3], of phase 2's from v[(j + 1) % 3]. */
        const __m256i b0 = _mm256_blend_epi32(_mm256_blend_epi32(v0, v1, 0x92), v2, 0x24);
        const __m256i b1 = _mm256_blend_epi32(_mm256_blend_epi32(v0, v1, 0x24), v2, 0x49);
        const __m256i b2 = _mm256_blend_epi32(_mm256_blend_epi32(v0, v1, 0x49), v2, 0x92);
        uint8_t *q = out + g * 4;
        _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(b0, order0));
        _mm256_storeu_si256((__m256i *)(q + pitch), _mm256_permutevar8x32_epi32(b1, order1));
        _mm256_storeu_si256((__m256i *)(q + 2 * pitch), _mm256_permutevar8x32_epi32(b2, order2));
    }
    split_tail(in, 4, 3, g, groups, pitch, out);
}

int tpvector_splits_into_phases(size_t unit_bytes, size_t step) {
    return (unit_bytes == 4 && step == 3) || (step == 4 && (unit_bytes == 1 || unit_bytes == 2 || unit_bytes == 4)) || (unit_bytes == 2 && step >= 5 && step <= 16)
        || (unit_bytes == 4 && step >= 5 && step <= 8);
}

AVX2 int tpvector_split_into_phases(const void *from, size_t unit_bytes, size_t step, size_t groups, size_t phase_length,
                                    void *phases) {
    const uint8_t *in = (const uint8_t *)from;
    uint8_t *out = (uint8_t *)phases;
    const size_t pitch = phase_length * unit_bytes;
    if (!tpvector_splits_into_phases(unit_bytes, step)) return 0;
    if (step == 3) {
        split_thirds(in, groups, pitch, out);
    } else if (step == 4) {
        split_by_four(in, unit_bytes, groups, pitch, out);
    } else if (unit_bytes == 2) {
        split_halves(in, step, groups, pitch, out);
    } else {
        split_words(in, step, groups, pitch, out);
    }
    return 1;
}

/* Positions' channels in vectors of `V` bytes (V 32, 16 or 8), the last ending at the last
 * channel: the position's channels alone are read, and a channel stored twice gets the same
 * maximum. Two positions at a time, up to 4 vectors of each per sweep over the taps (a
 * constant once inlined), so that each tap's step holds up to 8 independent chains of maxima,
 * as `foldManyChannels` does in Swift: one vector of one position per sweep left 20 channels
 * (two vectors of 16) slower than the Swift fold's three vectors of 8. A window's taps are
 * `taps` columns `tap_step` apart in each of `rows` rows at `rows_at` from its first column. */
#define BYTE_MAXIMA(NAME, VEC, LOAD, STORE, MAX, V)                                                                      \
    AVX2_INLINE void NAME##_group(const uint8_t *p, size_t jump, int pair, const ptrdiff_t *rows_at, size_t rows,        \
                                  size_t tap_step, size_t taps, size_t from, size_t last, int n, uint8_t *o,            \
                                  size_t out_step) {                                                                     \
        VEC a[4], b[4];                                                                                                  \
        size_t at[4];                                                                                                    \
        const uint8_t *r = p + rows_at[0];                                                                               \
        for (int v = 0; v < n; v++) {                                                                                    \
            at[v] = from + v * V < last ? from + v * V : last;                                                           \
            a[v] = LOAD((const VEC *)(r + at[v]));                                                                       \
            if (pair) b[v] = LOAD((const VEC *)(r + jump + at[v]));                                                      \
        }                                                                                                                \
        for (size_t row = 0; row < rows; row++) {                                                                        \
            const uint8_t *c = p + rows_at[row];                                                                         \
            for (size_t t = row == 0; t < taps; t++) {                                                                   \
                const uint8_t *q = c + t * tap_step;                                                                     \
                for (int v = 0; v < n; v++) {                                                                            \
                    a[v] = MAX(a[v], LOAD((const VEC *)(q + at[v])));                                                    \
                    if (pair) b[v] = MAX(b[v], LOAD((const VEC *)(q + jump + at[v])));                                   \
                }                                                                                                        \
            }                                                                                                            \
        }                                                                                                                \
        for (int v = 0; v < n; v++) {                                                                                    \
            STORE((VEC *)(o + at[v]), a[v]);                                                                             \
            if (pair) STORE((VEC *)(o + out_step + at[v]), b[v]);                                                        \
        }                                                                                                                \
    }                                                                                                                    \
    AVX2_INLINE void NAME##_positions(const uint8_t *p, size_t jump, int pair, const ptrdiff_t *rows_at, size_t rows,    \
                                      size_t tap_step, size_t taps, size_t channels, uint8_t *o, size_t out_step) {      \
        const size_t last = channels - V;                                                                                \
        for (size_t start = 0; start < channels; start += 4 * V) {                                                       \
            /* The first vector starts at most V before the end. */                                                      \
            const size_t from = start < last ? start : last;                                                             \
            switch ((channels - from + V - 1) / V) {                                                                     \
            case 1: NAME##_group(p, jump, pair, rows_at, rows, tap_step, taps, from, last, 1, o, out_step); break;       \
            case 2: NAME##_group(p, jump, pair, rows_at, rows, tap_step, taps, from, last, 2, o, out_step); break;       \
            case 3: NAME##_group(p, jump, pair, rows_at, rows, tap_step, taps, from, last, 3, o, out_step); break;       \
            default: NAME##_group(p, jump, pair, rows_at, rows, tap_step, taps, from, last, 4, o, out_step); break;      \
            }                                                                                                            \
        }                                                                                                                \
    }                                                                                                                    \
    AVX2_INLINE void NAME(const uint8_t *first, size_t count, size_t jump, const ptrdiff_t *rows_at, size_t rows,        \
                          size_t tap_step, size_t taps, size_t channels, uint8_t *out, size_t out_step) {                \
        size_t i = 0;                                                                                                    \
        for (; i + 2 <= count; i += 2)                                                                                   \
            NAME##_positions(first + i * jump, jump, 1, rows_at, rows, tap_step, taps, channels, out + i * out_step,      \
                             out_step);                                                                                  \
        if (i < count)                                                                                                   \
            NAME##_positions(first + i * jump, jump, 0, rows_at, rows, tap_step, taps, channels, out + i * out_step,      \
                             out_step);                                                                                  \
    }

/* Vectors of 8 bytes in the low half of an XMM register. */
#define LOAD8(p) _mm_loadl_epi64(p)
#define STORE8(p, v) _mm_storel_epi64(p, v)

BYTE_MAXIMA(signed_maxima32, __m256i, _mm256_loadu_si256, _mm256_storeu_si256, _mm256_max_epi8, 32)
BYTE_MAXIMA(unsigned_maxima32, __m256i, _mm256_loadu_si256, _mm256_storeu_si256, _mm256_max_epu8, 32)
BYTE_MAXIMA(signed_maxima16, __m128i, _mm_loadu_si128, _mm_storeu_si128, _mm_max_epi8, 16)
BYTE_MAXIMA(unsigned_maxima16, __m128i, _mm_loadu_si128, _mm_storeu_si128, _mm_max_epu8, 16)
BYTE_MAXIMA(signed_maxima8, __m128i, LOAD8, STORE8, _mm_max_epi8, 8)
BYTE_MAXIMA(unsigned_maxima8, __m128i, LOAD8, STORE8, _mm_max_epu8, 8)

AVX2 int tpvector_byte_maxima(const tpvector_byte_windows *windows, int is_signed) {
    static const ptrdiff_t one_row = 0;
    const uint8_t *in = (const uint8_t *)windows->first;
    uint8_t *o = (uint8_t *)windows->out;
    const size_t count = windows->count, jump = windows->jump, tap_step = windows->tap_step, taps = windows->taps;
    const size_t channels = windows->channels, out_step = windows->out_step;
    const ptrdiff_t *rows_at = windows->rows_at ? windows->rows_at : &one_row;
    const size_t rows = windows->rows_at ? windows->rows : 1;
    if (channels < TPVECTOR_BYTE_MAXIMA_CHANNELS || taps < 1 || rows < 1) return 0;
    if (channels >= 32) {
        if (is_signed) signed_maxima32(in, count, jump, rows_at, rows, tap_step, taps, channels, o, out_step);
        else unsigned_maxima32(in, count, jump, rows_at, rows, tap_step, taps, channels, o, out_step);
    } else if (channels >= 16) {
        if (is_signed) signed_maxima16(in, count, jump, rows_at, rows, tap_step, taps, channels, o, out_step);
        else unsigned_maxima16(in, count, jump, rows_at, rows, tap_step, taps, channels, o, out_step);
    } else {
        if (is_signed) signed_maxima8(in, count, jump, rows_at, rows, tap_step, taps, channels, o, out_step);
        else unsigned_maxima8(in, count, jump, rows_at, rows, tap_step, taps, channels, o, out_step);
    }
    return 1;
}

#else
#include <stdlib.h>

int tpvector_byte_maxima(const tpvector_byte_windows *windows, int is_signed) {
    (void)windows, (void)is_signed;
    return 0;
}

int tpvector_splits_into_phases(size_t unit_bytes, size_t step) {
    (void)unit_bytes, (void)step;
    return 0;
}

int tpvector_split_into_phases(const void *from, size_t unit_bytes, size_t step, size_t groups, size_t phase_length,
                               void *phases) {
    (void)from, (void)unit_bytes, (void)step, (void)groups, (void)phase_length, (void)phases;
    return 0;
}

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
