/*
 * tidepool.h - the C ABI of Tidepool, channels-last pooling with MLX's semantics.
 *
 * This header is the one definition of every C-visible Tidepool type: the Swift
 * sources import it as the module CTidepool, so Swift and C cannot drift apart.
 *
 * Semantics are those of MLX's mlx.nn.AvgPool{1,2,3}d and MaxPool{1,2,3}d:
 *   - input is channels-last and batch-first: (N, L, C), (N, H, W, C) or (N, D, H, W, C);
 *   - per spatial axis: kernel k > 0, stride s > 0, padding p >= 0 on both sides;
 *   - output length floor((n + 2p - k) / s) + 1; zero gives an empty output, negative is an error;
 *   - average pooling pads with zeros and divides by the full window (k_d * k_h * k_w);
 *   - max pooling pads with -inf (integers: the type's lowest value) and propagates NaN;
 *   - average keeps floating dtypes and turns integers into float32; max keeps every dtype.
 *
 * Conventions
 *   - Every fallible function returns a tp_status. On failure a message naming the bad
 *     argument is available from tp_last_error() on the same thread.
 *   - Input structs start with `struct_size` (set it to sizeof the struct, or use the
 *     *_init functions), so later versions can append fields without breaking old callers.
 *     Every `flags` field is reserved and must be zero.
 *   - No function aborts the process on bad input, null pointers included.
 *   - Unless stated otherwise, functions are safe to call from many threads at once.
 *   - Tidepool never frees memory it did not allocate; tensor data is owned by the caller.
 */
#ifndef TIDEPOOL_H
#define TIDEPOOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Versioning ------------------------------------------------------------------ */

#define TP_VERSION_MAJOR 0
#define TP_VERSION_MINOR 1
#define TP_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH, as returned by tp_version(). */
#define TP_MAKE_VERSION(major, minor, patch) ((major) * 10000 + (minor) * 100 + (patch))
#define TP_VERSION TP_MAKE_VERSION(TP_VERSION_MAJOR, TP_VERSION_MINOR, TP_VERSION_PATCH)

/* Version of the function table returned by tp_get_api(). Bumped when the table grows;
 * a library serves every table version up to its own. */
#define TP_API_VERSION 1

/* ---- Limits ---------------------------------------------------------------------- */

#define TP_MAX_SPATIAL_DIMS 3
#define TP_MAX_RANK 8

/* ---- Status codes ---------------------------------------------------------------- */

typedef enum tp_status {
    TP_OK = 0,
    /* A value out of its domain: kernel/stride/padding, spatial_dims, pool kind,
     * thread count, a negative shape entry. */
    TP_ERR_INVALID_ARGUMENT = 1,
    /* A required pointer was NULL (including tensor data with a non-empty shape). */
    TP_ERR_NULL_POINTER = 2,
    /* Unknown dtype, or an output dtype other than the one the operation produces. */
    TP_ERR_DTYPE = 3,
    /* Wrong rank for the pooling's spatial_dims, negative output length, or an output
     * tensor whose shape differs from the computed output shape. */
    TP_ERR_SHAPE = 4,
    /* A size, stride or byte count that does not fit in 64 bits. */
    TP_ERR_OVERFLOW = 5,
    /* A reserved flags field was not zero. */
    TP_ERR_FLAGS = 6,
    /* struct_size too small for this library, or an API version it does not serve. */
    TP_ERR_VERSION = 7,
    /* Output not contiguous channels-last, or output memory overlapping the input. */
    TP_ERR_LAYOUT = 8,
    /* Memory could not be allocated. */
    TP_ERR_NO_MEMORY = 9,
    /* A bug in Tidepool; please report it with tp_last_error()'s text. */
    TP_ERR_INTERNAL = 10,
    /* Remote: a message that breaks docs/protocol.md (frames, sizes, magic, locations). */
    TP_ERR_PROTOCOL = 11,
    /* Remote: the job moves more bytes than the daemon's --max-job-bytes. */
    TP_ERR_TOO_LARGE = 12,
    /* Remote: the daemon already runs --max-inflight jobs; retry later. */
    TP_ERR_BUSY = 13,
    /* Remote: no reply within the timeout. */
    TP_ERR_TIMEOUT = 14,
    /* Remote: the daemon cannot be reached at the endpoint. */
    TP_ERR_CONNECTION = 15,
    /* Remote: an unknown shared-memory region or job id, or one owned by another client. */
    TP_ERR_NOT_FOUND = 16,
    /* Remote: the daemon is shutting down, or the client handle was closed. */
    TP_ERR_CLOSED = 17,
    /* An operating-system call failed (shared memory, sockets); the message has errno's text. */
    TP_ERR_SYSTEM = 18
} tp_status;

/* ---- Data types ------------------------------------------------------------------ */

typedef enum tp_dtype {
    TP_DTYPE_FLOAT32 = 1,
    TP_DTYPE_FLOAT64 = 2,
    TP_DTYPE_FLOAT16 = 3,  /* IEEE 754 binary16 */
    TP_DTYPE_BFLOAT16 = 4, /* upper 16 bits of a float32, round-to-nearest-even */
    TP_DTYPE_INT8 = 5,
    TP_DTYPE_INT16 = 6,
    TP_DTYPE_INT32 = 7,
    TP_DTYPE_INT64 = 8,
    TP_DTYPE_UINT8 = 9,
    TP_DTYPE_UINT16 = 10,
    TP_DTYPE_UINT32 = 11,
    TP_DTYPE_UINT64 = 12
} tp_dtype;

typedef enum tp_pool_kind {
    TP_POOL_AVG = 1,
    TP_POOL_MAX = 2
} tp_pool_kind;

/* ---- Descriptors ----------------------------------------------------------------- */

/* A tensor: `rank` axes of `shape`, element `strides` (in elements, not bytes; may be
 * zero or negative), `data` pointing at element (0, ..., 0). The caller owns `data`.
 * For an input, any strides are accepted (views are read in place, never copied).
 * For an output, strides must be the contiguous row-major ones (tp_tensor_init with
 * strides == NULL sets them). */
typedef struct tp_tensor {
    uint32_t struct_size; /* sizeof(tp_tensor) */
    uint32_t flags;       /* reserved, must be 0 */
    void *data;
    int32_t dtype; /* a tp_dtype */
    int32_t rank;  /* 0 .. TP_MAX_RANK */
    int64_t shape[TP_MAX_RANK];
    int64_t strides[TP_MAX_RANK];
} tp_tensor;

/* A pooling layer: the arguments of MLX's constructor, one entry per spatial axis in
 * the order (depth, height, width) / (height, width) / (length). Entries past
 * spatial_dims are ignored. */
typedef struct tp_pool_desc {
    uint32_t struct_size; /* sizeof(tp_pool_desc) */
    uint32_t flags;       /* reserved, must be 0 */
    int32_t kind;         /* a tp_pool_kind */
    int32_t spatial_dims; /* 1, 2 or 3 */
    int64_t kernel_size[TP_MAX_SPATIAL_DIMS];
    int64_t stride[TP_MAX_SPATIAL_DIMS];
    int64_t padding[TP_MAX_SPATIAL_DIMS];
} tp_pool_desc;

/* ---- Library information ---------------------------------------------------------- */

/* The library's version as TP_MAKE_VERSION(major, minor, patch). Compare with
 * TP_VERSION to detect a header/library mismatch. Never fails. */
uint32_t tp_version(void);

/* The library's version as "MAJOR.MINOR.PATCH". Static storage; never NULL. */
const char *tp_version_string(void);

/* A short constant name for a status ("TP_ERR_SHAPE"); "TP_ERR_UNKNOWN" for a value this
 * library does not define. Static storage; never NULL. */
const char *tp_status_string(tp_status status);

/* Detail of the last failed call made by this thread ("" if none failed yet). The text
 * names the argument and the value that was wrong. Valid until the next Tidepool call on
 * the same thread; copy it to keep it. Never NULL. */
const char *tp_last_error(void);

/* Bytes per element of a dtype; 0 for a value that is not a tp_dtype. */
size_t tp_dtype_size(int32_t dtype);

/* ---- Initialisers ---------------------------------------------------------------- */

/* Fill *tensor: struct_size, flags = 0, data, dtype, rank, shape, and strides copied from
 * `strides`, or the contiguous row-major strides when `strides` is NULL.
 * Returns TP_ERR_NULL_POINTER (tensor, or shape with rank > 0), TP_ERR_SHAPE (rank outside
 * 0..TP_MAX_RANK), TP_ERR_INVALID_ARGUMENT (a negative shape entry), TP_ERR_OVERFLOW
 * (contiguous strides overflow). dtype and data are checked when the tensor is used. */
tp_status tp_tensor_init(tp_tensor *tensor, void *data, int32_t dtype, int32_t rank,
                         const int64_t *shape, const int64_t *strides);

/* Fill *desc for a pooling of `kind` over `spatial_dims` axes. `kernel_size` holds
 * spatial_dims entries; `stride` may be NULL (defaults to kernel_size, as in MLX) and
 * `padding` may be NULL (no padding). Values are checked here as well as when used.
 * Returns TP_ERR_NULL_POINTER (desc or kernel_size), TP_ERR_INVALID_ARGUMENT (kind,
 * spatial_dims, kernel_size/stride not positive, padding negative). */
tp_status tp_pool_desc_init(tp_pool_desc *desc, int32_t kind, int32_t spatial_dims,
                            const int64_t *kernel_size, const int64_t *stride,
                            const int64_t *padding);

/* ---- Pooling --------------------------------------------------------------------- */

/* Describe the output of pooling `input` with `desc`: fills *output with struct_size,
 * dtype, rank, shape and contiguous strides, and sets output->data to NULL, ready for the
 * caller to point at a buffer of tp_tensor_nbytes(output) bytes. input->data may be NULL.
 * Returns TP_ERR_NULL_POINTER, TP_ERR_VERSION, TP_ERR_FLAGS, TP_ERR_INVALID_ARGUMENT,
 * TP_ERR_DTYPE, TP_ERR_SHAPE (rank != spatial_dims + 2, negative output length),
 * TP_ERR_OVERFLOW. */
tp_status tp_pool_output(const tp_pool_desc *desc, const tp_tensor *input, tp_tensor *output);

/* Bytes spanned by a contiguous tensor (product of shape times dtype size) in *nbytes.
 * Returns TP_ERR_NULL_POINTER, TP_ERR_VERSION, TP_ERR_DTYPE, TP_ERR_SHAPE,
 * TP_ERR_INVALID_ARGUMENT (negative shape entry), TP_ERR_OVERFLOW. */
tp_status tp_tensor_nbytes(const tp_tensor *tensor, size_t *nbytes);

/* Pool `input` into `output` (both owned by the caller). The output must have exactly the
 * dtype and shape tp_pool_output() gives, contiguous strides, and must not overlap the
 * input. Everything is validated before any element is written; on error the output is
 * untouched. Runs on tp_get_num_threads() threads; results are bit-identical for every
 * thread count. Safe to call from many threads at once.
 * Returns every status of tp_pool_output(), plus TP_ERR_NULL_POINTER (data NULL with a
 * non-empty shape), TP_ERR_DTYPE / TP_ERR_SHAPE (output mismatch), TP_ERR_LAYOUT
 * (output not contiguous, or overlapping the input), TP_ERR_NO_MEMORY. */
tp_status tp_pool(const tp_pool_desc *desc, const tp_tensor *input, const tp_tensor *output);

/* ---- Threads --------------------------------------------------------------------- */

/* Set the number of threads later tp_pool calls use (process-wide). 0 means one per
 * online CPU (the default). Returns TP_ERR_INVALID_ARGUMENT for a negative count or one
 * above 1024. */
tp_status tp_set_num_threads(int32_t num_threads);

/* The number of threads tp_pool uses now (never 0). */
int32_t tp_get_num_threads(void);

/* ---- Plugin-style loading ---------------------------------------------------------- */

/* Every function above, for hosts that dlopen() the library and want a single dlsym().
 * Fields are only ever appended; check struct_size before using one added later. */
typedef struct tp_api {
    uint32_t struct_size; /* sizeof(tp_api) as built into the library */
    uint32_t api_version; /* the version served (== the one asked for) */
    uint32_t (*version)(void);
    const char *(*version_string)(void);
    const char *(*status_string)(tp_status status);
    const char *(*last_error)(void);
    size_t (*dtype_size)(int32_t dtype);
    tp_status (*tensor_init)(tp_tensor *tensor, void *data, int32_t dtype, int32_t rank,
                             const int64_t *shape, const int64_t *strides);
    tp_status (*pool_desc_init)(tp_pool_desc *desc, int32_t kind, int32_t spatial_dims,
                                const int64_t *kernel_size, const int64_t *stride,
                                const int64_t *padding);
    tp_status (*pool_output)(const tp_pool_desc *desc, const tp_tensor *input,
                             tp_tensor *output);
    tp_status (*tensor_nbytes)(const tp_tensor *tensor, size_t *nbytes);
    tp_status (*pool)(const tp_pool_desc *desc, const tp_tensor *input,
                      const tp_tensor *output);
    tp_status (*set_num_threads)(int32_t num_threads);
    int32_t (*get_num_threads)(void);
} tp_api;

/* The function table for `api_version` (pass TP_API_VERSION), or NULL when this library
 * is older than that version (tp_last_error() then says which versions it serves).
 * The table is static and lives as long as the library stays loaded. */
const tp_api *tp_get_api(uint32_t api_version);

/* The signature of tp_get_api, for dlsym(). */
typedef const tp_api *(*tp_get_api_fn)(uint32_t api_version);

#ifdef __cplusplus
}
#endif

#endif /* TIDEPOOL_H */
