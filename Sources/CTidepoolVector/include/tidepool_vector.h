/* CPU checks for code chosen at run time, and vector kernels the Swift compiler cannot emit
 * for any CPU level the kernels are built for: the last step of average pooling for 16-bit
 * floats in AVX-512, with bfloat16's own rounding instruction, chosen at run time where the
 * CPU has them. A kernel folds float32 sums left to right, scales them and rounds to nearest
 * even, bit for bit as the engine's Swift loops do (Float16(Float), BFloat16(Float)), 16 values
 * per vector instead of 8, and a bfloat16 rounding in one instruction where the Swift loop
 * takes 10 per 8 values. And, for the kernels built for x86-64-v3, the AVX2 transposes that
 * split rows into phases (tpvector_split_into_phases) and the byte maxima of many channels in
 * whole registers (tpvector_byte_maxima). */
#ifndef TIDEPOOL_VECTOR_H
#define TIDEPOOL_VECTOR_H

#include <stddef.h>
#include <stdint.h>

typedef enum { TPVECTOR_FLOAT16 = 1, TPVECTOR_BFLOAT16 = 2 } tpvector_format;

/* Whether this CPU (and its OS) runs code built for x86-64-v3: AVX2, FMA, F16C, BMI1/2, LZCNT
 * and MOVBE, the level TidepoolKernelsAVX2 is compiled for. 0 on other architectures. */
int tpvector_supports_x86_64_v3(void);

/* Whether this CPU runs the kernels for `format`; where it does not, they must not be called. */
int tpvector_supports(tpvector_format format);

/* out[j] = round(scale * ((((sources[0][j] + sources[1][j]) + sources[2][j]) + ...) + z)) for
 * j < length, from `count` sources (1 to 6), where z is +0, or -0 for a scale of 1: the sum
 * from +0 as MLX takes it (+0 turns a sum of -0s alone into +0 and changes no other), a window
 * of one element passed through as MLX passes it (-0 changes nothing). */
void tpvector_finish_runs(tpvector_format format, uint16_t *out, size_t length, const float *const *sources, int count,
                          float scale);

/* `rows` rows of `length` sums each, `length` apart in `source` and in `out`: out[j] =
 * round(scale * (((x(j + first) + x(j + first + step)) + ...) + z)) over `taps` taps (1 to 6),
 * where x(i) is the row's element i, or +0 outside the row (the padding of an average), and z
 * is as for tpvector_finish_runs. */
void tpvector_finish_rows(tpvector_format format, uint16_t *out, const float *source, size_t rows, ptrdiff_t length,
                          ptrdiff_t first, ptrdiff_t step, int taps, float scale);

/* Splits `groups` groups of `step` units of `unit_bytes` bytes from `from` into `step` phases,
 * phase r at `phases` + r * `phase_length` units holding units r, r + step, ... of the groups,
 * and returns 1; or returns 0, with nothing written, for units and steps other than 1-, 2- and
 * 4-byte units at step 4, 2-byte units at steps 5 to 16 and 4-byte units at steps 3 and 5 to 8.
 * Transposes in AVX2 shuffles, where the compiler's vector loops for those constant steps take
 * about twice as long. Reads no byte past the groups. Only where
 * tpvector_supports_x86_64_v3 (on other architectures it returns 0). */
int tpvector_split_into_phases(const void *from, size_t unit_bytes, size_t step, size_t groups, size_t phase_length,
                               void *phases);

/* Whether tpvector_split_into_phases takes `unit_bytes` and `step` (0 on other architectures,
 * where it takes none). */
int tpvector_splits_into_phases(size_t unit_bytes, size_t step);

/* Windows of bytes for tpvector_byte_maxima: `count` positions `jump` bytes apart from `first`;
 * each position's window holds `taps` columns `tap_step` bytes apart in each of `rows` rows at
 * `rows_at[r]` bytes from the position (one row at 0 where `rows_at` is NULL), each column of
 * `channels` contiguous bytes; position i's `channels` maxima go to out + i * out_step. */
typedef struct {
    const void *first;
    size_t count, jump;
    const ptrdiff_t *rows_at;
    size_t rows, tap_step, taps, channels;
    void *out;
    size_t out_step;
} tpvector_byte_windows;

/* The fewest channels tpvector_byte_maxima takes. */
#define TPVECTOR_BYTE_MAXIMA_CHANNELS 9

/* The maxima of `windows` (int8 where `is_signed`, else uint8). Returns 1; or 0, with nothing
 * written, for fewer than TPVECTOR_BYTE_MAXIMA_CHANNELS channels, no tap or no row. Reads only
 * the windows' channels and writes only each position's `channels` outputs. AVX2 vectors of 32
 * bytes (16 for 16 to 31 channels, 8 for 9 to 15). Only where tpvector_supports_x86_64_v3 (on
 * other architectures it returns 0). */
int tpvector_byte_maxima(const tpvector_byte_windows *windows, int is_signed);

#endif
