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
 * PyTorch's ceil_mode and count_include_pad=False are tp_pool_desc flags (0.3.0 on); with
 * flags 0 a descriptor means MLX's rules above.
 *
 * Conventions
 *   - Every fallible function returns a tp_status. On failure a message naming the bad
 *     argument is available from tp_last_error() on the same thread.
 *   - Input structs start with `struct_size` (set it to sizeof the struct, or use the
 *     *_init functions), so later versions can append fields without breaking old callers.
 *     Every `flags` bit not defined here is reserved and must be zero.
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
#define TP_VERSION_MINOR 3
#define TP_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH, as returned by tp_version(). */
#define TP_MAKE_VERSION(major, minor, patch) ((major) * 10000 + (minor) * 100 + (patch))
#define TP_VERSION TP_MAKE_VERSION(TP_VERSION_MAJOR, TP_VERSION_MINOR, TP_VERSION_PATCH)

/* Version of the function table returned by tp_get_api(). Bumped when the table grows;
 * a library serves every table version up to its own. Version 2 added the client calls,
 * version 3 tp_client_cancel, version 4 tp_cpu_level, version 5 tp_pool_backward and
 * tp_client_pool_backward / tp_client_submit_backward, version 6 tp_client_connect_v2. */
#define TP_API_VERSION 6

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
    /* A reserved flag bit was set (a bit this library does not define). */
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
    TP_ERR_SYSTEM = 18,
    /* Remote: not allowed for this caller: another user's shared memory, shared memory over
     * tcp, or an endpoint whose socket or directory another user controls. */
    TP_ERR_PERMISSION = 19
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
 * spatial_dims are ignored. `flags` holds PyTorch's options (tp_pool_flags, 0.3.0 on); 0
 * means MLX's rules. */
typedef struct tp_pool_desc {
    uint32_t struct_size; /* sizeof(tp_pool_desc) */
    uint32_t flags;       /* tp_pool_flags or'ed; other bits reserved, must be 0 */
    int32_t kind;         /* a tp_pool_kind */
    int32_t spatial_dims; /* 1, 2 or 3 */
    int64_t kernel_size[TP_MAX_SPATIAL_DIMS];
    int64_t stride[TP_MAX_SPATIAL_DIMS];
    int64_t padding[TP_MAX_SPATIAL_DIMS];
} tp_pool_desc;

/* PyTorch's pooling options, as bits of tp_pool_desc.flags (0.3.0 on). They are flags rather
 * than fields appended to the struct because tp_pool_desc_init writes the caller's struct: a
 * longer struct would overrun those of callers built against an older header, while a library
 * older than 0.3.0 refuses these bits with TP_ERR_FLAGS instead of ignoring them. */
typedef enum tp_pool_flags {
    /* PyTorch's ceil_mode: output length ceil((n + 2p - k) / s) + 1, less one when that last
     * window would start at or past n + p (in the right padding). Window positions past the
     * padding count as padding: ignored by max, zero in a sum. Without it, MLX's floor rule. */
    TP_POOL_CEIL_MODE = 1,
    /* Averages only: PyTorch's count_include_pad=False. A window's sum is divided by its
     * positions inside the input; a window with none (padding wider than the kernel) gives 0.
     * Without it (count_include_pad=True, MLX's rule) the divisor is the window's positions
     * inside the padded input: the kernel size, except for a ceil-mode window reaching past the
     * padding, as PyTorch divides. With TP_POOL_MAX it is TP_ERR_INVALID_ARGUMENT. */
    TP_POOL_EXCLUDE_PADDING = 2
} tp_pool_flags;

/* ---- Library information ---------------------------------------------------------- */

/* The library's version as TP_MAKE_VERSION(major, minor, patch). Compare with
 * TP_VERSION to detect a header/library mismatch. Never fails. */
uint32_t tp_version(void);

/* The library's version as "MAJOR.MINOR.PATCH". Static storage; never NULL. */
const char *tp_version_string(void);

/* The CPU level whose kernels this process runs: "x86-64" (every x86-64 CPU) or "x86-64-v3"
 * (AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE). One library carries both and chooses once, on first
 * use: the best level this CPU runs, or the one the environment variable TIDEPOOL_CPU names
 * ("baseline" or "x86-64", "avx2" or "x86-64-v3", "auto"). A name of no level, or of a level
 * this CPU lacks, is ignored with one line on standard error. Both levels give the same bits.
 * Where the CPU has AVX-512, 16-bit float averages finish in it on either level. Static
 * storage; never NULL. (API version 4.) */
const char *tp_cpu_level(void);

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
 * `padding` may be NULL (no padding). flags is set to 0 (MLX's rules; or in tp_pool_flags
 * afterwards for PyTorch's options). Values are checked here as well as when used.
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
 * thread count and every input layout but broadcast or self-overlapping ones (a float average
 * of an input whose rows are not dense copies it into a dense buffer first, a few batch entries
 * at a time, so that it adds in the contiguous input's order). Safe to call from many threads at once.
 * Returns every status of tp_pool_output(), plus TP_ERR_NULL_POINTER (data NULL with a
 * non-empty shape), TP_ERR_DTYPE / TP_ERR_SHAPE (output mismatch), TP_ERR_LAYOUT
 * (output not contiguous, or overlapping the input), TP_ERR_NO_MEMORY. */
tp_status tp_pool(const tp_pool_desc *desc, const tp_tensor *input, const tp_tensor *output);

/* ---- Gradients ------------------------------------------------------------------- */

/* How max pooling's gradient treats a window with several positions equal to its maximum. */
typedef enum tp_max_ties {
    /* MLX's rule (the default): the window's cotangent is split evenly among all of them,
     * padding positions included (their shares are dropped); a window whose maximum is NaN
     * gives NaN to every element in it. */
    TP_TIES_SPLIT = 0,
    /* PyTorch's rule: all of it to the first maximum in (d, h, w) scan order of the
     * in-bounds positions, or to the last NaN where the window holds one. */
    TP_TIES_FIRST = 1
} tp_max_ties;

/* Options of tp_pool_backward(); grows through struct_size. Zero it and set struct_size, or
 * pass NULL for the defaults. */
typedef struct tp_backward_options {
    uint32_t struct_size; /* sizeof(tp_backward_options) */
    uint32_t flags;       /* reserved, must be 0 */
    int32_t max_ties;     /* a tp_max_ties; ignored by averages */
    int32_t reserved;     /* must be 0 */
} tp_backward_options;

/* The backward pass of pooling (vector-Jacobian product), as MLX differentiates it: the
 * gradient with respect to `input` of pooling `input` by `desc`, for the cotangent
 * `grad_output` (the output's dtype and shape, any strides), written to `grad_input` (the
 * input's dtype and shape, contiguous). Average: each element receives, from every window
 * holding it, that window's cotangent divided by the window's divisor (the full window size,
 * padding counted, unless desc's tp_pool_flags say otherwise). Max:
 * see tp_max_ties. Floating-point dtypes only; sums in float32 (float64 for float64), rounded
 * once. Validated before any element is written; bit-identical for every thread count; safe
 * from many threads at once. `options` may be NULL. (API version 5.)
 * Returns every status of tp_pool(), with TP_ERR_DTYPE for an integer input, and
 * TP_ERR_VERSION / TP_ERR_FLAGS / TP_ERR_INVALID_ARGUMENT for the options. */
tp_status tp_pool_backward(const tp_pool_desc *desc, const tp_tensor *input, const tp_tensor *grad_output,
                           const tp_tensor *grad_input, const tp_backward_options *options);

/* ---- Threads --------------------------------------------------------------------- */

/* Set the number of threads later tp_pool calls use (process-wide). 0 means one per
 * online CPU (the default). Returns TP_ERR_INVALID_ARGUMENT for a negative count or one
 * above 1024.
 *
 * A call runs on the calling thread and on helper threads the library starts on first need
 * (named "tidepool-help"; at most one per other online CPU, however many are asked for) and
 * keeps: a helper spins for about 0.1 ms after a call, then sleeps. Small calls run on the
 * calling thread alone, as does a call made while another thread's call has the helpers.
 * Helpers block every signal but faults (SIGBUS, SIGSEGV, SIGFPE, SIGILL, SIGTRAP), so
 * signals sent to the process reach the host's threads. fork() waits for a call in progress
 * (pthread_atfork), and the child starts helpers of its own. */
tp_status tp_set_num_threads(int32_t num_threads);

/* The number of threads tp_pool uses now (never 0). */
int32_t tp_get_num_threads(void);

/* ---- Remote: the tidepoold daemon --------------------------------------------------- */
/*
 * A client sends pooling jobs to a running tidepoold (see docs/protocol.md) over ZeroMQ.
 * Tensors placed in buffers from tp_client_alloc() (POSIX shared memory registered with
 * the daemon) travel by reference: the daemon reads the input from, and writes the output
 * into, the caller's memory, and no tensor byte crosses the socket. Any other tensor is
 * copied into the request (and the output out of the reply), which also works over tcp.
 *
 * Thread safety: a client may be used from several threads; its calls are serialised.
 * Handles are checked: a closed or unknown handle gives TP_ERR_INVALID_ARGUMENT.
 *
 * The daemon may die or restart under a client. A client notices at once when the daemon's
 * process ends on this host, and within about 5 s (ZeroMQ heartbeats) when it stops
 * answering. If a daemon answers again within 3 s, the client resumes: it registers its
 * buffers with the new daemon and sends again every job without an answer (a job is
 * idempotent, and a daemon that already ran it does not run it twice), so calls succeed
 * and nothing is lost. Otherwise waiting calls fail with TP_ERR_CONNECTION, and so does
 * every call until a daemon is back, after which calls work again.
 *
 * Memory handed to a call: a synchronous call never writes into caller memory after it has
 * returned, whatever it returned. For tp_client_submit, see there.
 */

typedef struct tp_client tp_client; /* opaque connection to a daemon */
typedef struct tp_buffer tp_buffer; /* opaque shared-memory buffer */

/* The endpoint clients and the daemon use by default: $TIDEPOOL_ENDPOINT, else
 * "ipc://$XDG_RUNTIME_DIR/tidepool.sock", else "ipc:///tmp/tidepool-$UID/tidepool.sock".
 * Thread-local storage, valid until this thread's next call of it. Never NULL. */
const char *tp_default_endpoint(void);

/* Connect to the daemon at `endpoint` (NULL: tp_default_endpoint()) and ping it, waiting
 * at most `timeout_ms` (-1: no limit, but at most 3 s for a daemon to appear) for the
 * answer; the same limit applies to later synchronous calls. On success *client is a new
 * handle to pass to tp_client_close().
 * An ipc endpoint is used only if its socket belongs to this user or root and its
 * directory cannot be controlled by another user (the default directories must be this
 * user's, mode 0700): otherwise another user's daemon could receive the tensors.
 * A tcp endpoint speaks CurveZMQ when $TIDEPOOL_CURVE_SERVER_KEY and
 * $TIDEPOOL_CURVE_CLIENT_CERT are set (see tp_client_options).
 * Returns TP_ERR_NULL_POINTER, TP_ERR_INVALID_ARGUMENT (timeout below -1, or unusable keys),
 * TP_ERR_CONNECTION (no daemon there, or no answer in time), TP_ERR_PERMISSION (an ipc
 * socket or directory another user controls), TP_ERR_SYSTEM. */
tp_status tp_client_connect(const char *endpoint, int32_t timeout_ms, tp_client **client);

/* How tp_client_connect_v2 connects. Zero it, then set struct_size, e.g.
 *   tp_client_options options = { .struct_size = sizeof options, .timeout_ms = 5000 };
 * CurveZMQ (tcp endpoints only; docs/protocol.md): the connection is encrypted and the daemon
 * admits it only if the client's public key is among its authorized keys. Both keys or
 * neither: a NULL field takes the environment variable named beside it, an empty string ""
 * means none (and ignores the variable). tp_client_connect also reads the variables. For an
 * ipc endpoint the variables are ignored and explicit keys are TP_ERR_INVALID_ARGUMENT (the
 * kernel names ipc peers; the daemon does not speak CURVE there). (API version 6.) */
typedef struct tp_client_options {
    uint32_t struct_size; /* sizeof(tp_client_options) */
    uint32_t flags;       /* reserved, must be 0 */
    int32_t timeout_ms;   /* as tp_client_connect's timeout_ms */
    int32_t reserved;     /* must be 0 */
    /* The daemon's public key: 40 Z85 characters, or the path of its public certificate
     * (NAME.key, as `tidepoold keygen NAME`, CZMQ's zcert or pyzmq's create_certificates
     * write it). NULL: $TIDEPOOL_CURVE_SERVER_KEY. */
    const char *curve_server_key;
    /* The path of this client's secret certificate (NAME.key_secret: both keys; a regular file
     * of this user, mode 0600 or stricter). NULL: $TIDEPOOL_CURVE_CLIENT_CERT. */
    const char *curve_client_cert;
} tp_client_options;

/* tp_client_connect with options (NULL: timeout_ms -1 and the environment's keys).
 * Returns the statuses of tp_client_connect, with TP_ERR_VERSION / TP_ERR_FLAGS for the
 * options' header, TP_ERR_INVALID_ARGUMENT for keys or certificates that cannot be used (the
 * message names the file and why), and TP_ERR_CONNECTION when the daemon refuses the
 * handshake (a key it does not authorize, or CURVE on one side only), saying so. */
tp_status tp_client_connect_v2(const char *endpoint, const tp_client_options *options, tp_client **client);

/* Tell the daemon to drop this client's buffers, close the connection and free the
 * handle. Buffers stay mapped in this process until tp_buffer_free(). Jobs not yet waited
 * for are abandoned: no inline output is written after this returns (outputs in shared
 * buffers may still be written by the daemon until it notices). NULL is accepted (no-op).
 * Returns TP_ERR_INVALID_ARGUMENT for a handle that is not open. */
tp_status tp_client_close(tp_client *client);

/* Round trip of a ping, in seconds, into *seconds (which may be NULL).
 * Returns TP_ERR_INVALID_ARGUMENT, TP_ERR_TIMEOUT, TP_ERR_CONNECTION, TP_ERR_CLOSED. */
tp_status tp_client_ping(tp_client *client, double *seconds);

/* The daemon's counters as a JSON object, NUL-terminated, into json[0 .. capacity); the
 * full length (without the NUL) goes to *length when length is not NULL. json may be NULL
 * with capacity 0 to ask for the length. Truncated output is still NUL-terminated.
 * Returns the statuses of tp_client_ping. */
tp_status tp_client_stats(tp_client *client, char *json, size_t capacity, size_t *length);

/* A new shared-memory buffer of `nbytes` bytes (page-rounded by the system), private to
 * this user (mode 0600), backed now (a full /dev/shm is TP_ERR_SYSTEM here, never a
 * SIGBUS later), and registered with the daemon. Its name stays in /dev/shm until
 * tp_buffer_free(), so that a restarted daemon can map it again; if the process dies, the
 * daemon removes it. Fill it in place; a tensor whose data lies inside it (contiguous)
 * goes to jobs by reference. Free it with tp_buffer_free(), before or after closing the
 * client. Only over ipc: a tcp daemon refuses shared memory (TP_ERR_PERMISSION).
 * Returns TP_ERR_NULL_POINTER, TP_ERR_INVALID_ARGUMENT (handle, nbytes 0),
 * TP_ERR_TOO_LARGE (over the daemon's --max-job-bytes), TP_ERR_PERMISSION, TP_ERR_SYSTEM,
 * TP_ERR_TIMEOUT, TP_ERR_CONNECTION, TP_ERR_CLOSED. */
tp_status tp_client_alloc(tp_client *client, size_t nbytes, tp_buffer **buffer);

/* The buffer's memory (page-aligned) and size; NULL / 0 for an invalid handle. */
void *tp_buffer_data(const tp_buffer *buffer);
size_t tp_buffer_size(const tp_buffer *buffer);

/* Unregister (if the client is open), remove the name, unmap the buffer and free the
 * handle. NULL is accepted. Returns TP_ERR_INVALID_ARGUMENT for a handle that is not live. */
tp_status tp_buffer_free(tp_buffer *buffer);

/* Run a pooling job on the daemon and wait for it (the connect timeout applies). Same
 * arguments and rules as tp_pool(); a strided input is packed into the request. On
 * TP_ERR_TIMEOUT the job is cancelled: nothing is written into `output` after the call
 * returns (an output in a shared buffer may still be written by the daemon: the buffer is
 * the caller's). Returns tp_pool's statuses, detected locally or by the daemon, plus
 * TP_ERR_TOO_LARGE, TP_ERR_BUSY (daemon at --max-inflight or --max-queued-bytes: retry),
 * TP_ERR_TIMEOUT, TP_ERR_CONNECTION, TP_ERR_CLOSED, TP_ERR_PROTOCOL, TP_ERR_NOT_FOUND,
 * TP_ERR_SYSTEM. */
tp_status tp_client_pool(tp_client *client, const tp_pool_desc *desc, const tp_tensor *input,
                         const tp_tensor *output);

/* Send a job without waiting; *job receives its id for tp_client_wait(). Several jobs may
 * be in flight at once. The job owns `input` and `output` memory until it ends: until
 * tp_client_wait() returns something other than TP_ERR_TIMEOUT, tp_client_cancel()
 * returns, or the client is closed. Until then the input may be read again (the job is sent
 * again after a lost connection) and the output written.
 * Returns the argument checks of tp_client_pool plus TP_ERR_CONNECTION, TP_ERR_CLOSED. */
tp_status tp_client_submit(tp_client *client, const tp_pool_desc *desc, const tp_tensor *input,
                           const tp_tensor *output, uint64_t *job);

/* Wait for a submitted job, at most `timeout_ms` (-1: no limit). TP_ERR_TIMEOUT leaves the
 * job pending (wait again, or cancel it); any other result ends it. Returns the job's
 * status, or TP_ERR_NOT_FOUND for an id that is not pending on this client. */
tp_status tp_client_wait(tp_client *client, uint64_t job, int32_t timeout_ms);

/* tp_pool_backward() run by the daemon: same arguments and rules, and tp_client_pool's
 * waiting, cancelling and statuses. The cotangent travels like an input (by reference when
 * it lies contiguous in one of the client's buffers, packed into the request otherwise); the
 * gradient like an output. (API version 5.) */
tp_status tp_client_pool_backward(tp_client *client, const tp_pool_desc *desc, const tp_tensor *input,
                                  const tp_tensor *grad_output, const tp_tensor *grad_input,
                                  const tp_backward_options *options);

/* tp_client_pool_backward() without waiting, as tp_client_submit(): the job owns `input`,
 * `grad_output` and `grad_input` until it ends. (API version 5.) */
tp_status tp_client_submit_backward(tp_client *client, const tp_pool_desc *desc, const tp_tensor *input,
                                    const tp_tensor *grad_output, const tp_tensor *grad_input,
                                    const tp_backward_options *options, uint64_t *job);

/* End a pending job without waiting for it. Once this returns, Tidepool neither reads the
 * job's input nor writes its output in caller memory again (an output in a shared buffer
 * may still be written by the daemon until the job ends there). API version 3.
 * Returns TP_ERR_INVALID_ARGUMENT (handle), TP_ERR_NOT_FOUND (not pending). */
tp_status tp_client_cancel(tp_client *client, uint64_t job);

/* ---- Plugin-style loading ---------------------------------------------------------- */

/* Every function above, for hosts that dlopen() the library and want a single dlsym().
 * Fields are only ever appended; check struct_size before using one added later. */
typedef struct tp_api {
    uint32_t struct_size; /* sizeof(tp_api) as built into the library */
    uint32_t api_version; /* the library's TP_API_VERSION, at least the one asked for */
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
    /* API version 2 */
    const char *(*default_endpoint)(void);
    tp_status (*client_connect)(const char *endpoint, int32_t timeout_ms, tp_client **client);
    tp_status (*client_close)(tp_client *client);
    tp_status (*client_ping)(tp_client *client, double *seconds);
    tp_status (*client_stats)(tp_client *client, char *json, size_t capacity, size_t *length);
    tp_status (*client_alloc)(tp_client *client, size_t nbytes, tp_buffer **buffer);
    void *(*buffer_data)(const tp_buffer *buffer);
    size_t (*buffer_size)(const tp_buffer *buffer);
    tp_status (*buffer_free)(tp_buffer *buffer);
    tp_status (*client_pool)(tp_client *client, const tp_pool_desc *desc, const tp_tensor *input,
                             const tp_tensor *output);
    tp_status (*client_submit)(tp_client *client, const tp_pool_desc *desc, const tp_tensor *input,
                               const tp_tensor *output, uint64_t *job);
    tp_status (*client_wait)(tp_client *client, uint64_t job, int32_t timeout_ms);
    /* API version 3 */
    tp_status (*client_cancel)(tp_client *client, uint64_t job);
    /* API version 4 */
    const char *(*cpu_level)(void);
    /* API version 5 */
    tp_status (*pool_backward)(const tp_pool_desc *desc, const tp_tensor *input, const tp_tensor *grad_output,
                               const tp_tensor *grad_input, const tp_backward_options *options);
    tp_status (*client_pool_backward)(tp_client *client, const tp_pool_desc *desc, const tp_tensor *input,
                                      const tp_tensor *grad_output, const tp_tensor *grad_input,
                                      const tp_backward_options *options);
    tp_status (*client_submit_backward)(tp_client *client, const tp_pool_desc *desc, const tp_tensor *input,
                                        const tp_tensor *grad_output, const tp_tensor *grad_input,
                                        const tp_backward_options *options, uint64_t *job);
    /* API version 6 */
    tp_status (*client_connect_v2)(const char *endpoint, const tp_client_options *options, tp_client **client);
} tp_api;

/* The function table for `api_version` (pass TP_API_VERSION), or NULL when this library
 * is older than that version (tp_last_error() then says which versions it serves).
 * A table of version N fills every field up to N's; its struct_size says how far it goes.
 * The table is static and lives as long as the library stays loaded. */
const tp_api *tp_get_api(uint32_t api_version);

/* The signature of tp_get_api, for dlsym(). */
typedef const tp_api *(*tp_get_api_fn)(uint32_t api_version);

#ifdef __cplusplus
}
#endif

#endif /* TIDEPOOL_H */
