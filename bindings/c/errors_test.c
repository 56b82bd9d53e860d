/* errors_test.c - every class of bad argument gets its status and a message naming the
 * argument, from plain C; nothing aborts the process. Prints "N passed, M failed". */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "tidepool.h"

static int passed = 0, failed = 0;

/* One expectation: `status` is `want` and tp_last_error() mentions `fragment`. */
static void expect(const char *what, tp_status status, tp_status want, const char *fragment) {
    const char *message = tp_last_error();
    if (status == want && (want == TP_OK || strstr(message, fragment) != NULL)) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL %s: got %s (\"%s\"), want %s mentioning \"%s\"\n", what, tp_status_string(status),
                message, tp_status_string(want), fragment);
    }
}

static void *error_in_other_thread(void *unused) {
    (void)unused;
    tp_set_num_threads(-7);
    return NULL;
}

int main(void) {
    float x[2 * 4 * 4 * 3] = {0}, y[2 * 2 * 2 * 3];
    const int64_t shape[4] = {2, 4, 4, 3}, kernel[2] = {2, 2};
    tp_tensor input, output;
    tp_pool_desc desc;
    expect("valid setup", tp_tensor_init(&input, x, TP_DTYPE_FLOAT32, 4, shape, NULL), TP_OK, "");
    expect("valid desc", tp_pool_desc_init(&desc, TP_POOL_AVG, 2, kernel, NULL, NULL), TP_OK, "");
    expect("valid output", tp_pool_output(&desc, &input, &output), TP_OK, "");
    output.data = y;
    expect("valid pool", tp_pool(&desc, &input, &output), TP_OK, "");

    /* The same structs again (tp_pool keeps what it checked for them): other data, other
     * answers; then each struct changed in place is checked again in full. */
    {
        float a[2 * 4 * 4 * 3], b[2 * 2 * 2 * 3];
        int right = 1;
        for (int round = 1; round <= 3; round++) {
            for (int i = 0; i < 2 * 4 * 4 * 3; i++) a[i] = (float)(round * i);
            input.data = a;
            output.data = b;
            expect("pool the same structs again", tp_pool(&desc, &input, &output), TP_OK, "");
            /* Output (n, 0, 0, c) averages rows 0-1, columns 0-1: i = n*48 + {0, 3, 12, 15} + c. */
            for (int n = 0; n < 2; n++)
                for (int c = 0; c < 3; c++) {
                    float want = (float)round * (float)(4 * (n * 48 + c) + 30) / 4.0f;
                    if (b[n * 12 + c] != want) right = 0;
                }
        }
        if (right) passed++; else { failed++; fprintf(stderr, "FAIL reused structs: wrong averages\n"); }
        output.shape[1] = 3;
        expect("output shape changed in place", tp_pool(&desc, &input, &output), TP_ERR_SHAPE, "output shape must be");
        output.shape[1] = 2;
        desc.kernel_size[0] = 5;
        expect("kernel changed in place", tp_pool(&desc, &input, &output), TP_ERR_SHAPE, "output shape must be (2, 0, 2, 3)");
        desc.kernel_size[0] = 2;
        input.dtype = TP_DTYPE_FLOAT64;
        expect("input dtype changed in place", tp_pool(&desc, &input, &output), TP_ERR_DTYPE, "output dtype must be float64");
        input.dtype = TP_DTYPE_FLOAT32;
        input.data = x;
        output.data = y;
        expect("and back", tp_pool(&desc, &input, &output), TP_OK, "");
    }

    /* Null pointers. */
    expect("null desc", tp_pool(NULL, &input, &output), TP_ERR_NULL_POINTER, "desc");
    expect("null input", tp_pool(&desc, NULL, &output), TP_ERR_NULL_POINTER, "input");
    expect("null output", tp_pool(&desc, &input, NULL), TP_ERR_NULL_POINTER, "output");
    expect("null tensor", tp_tensor_init(NULL, x, TP_DTYPE_FLOAT32, 4, shape, NULL), TP_ERR_NULL_POINTER, "tensor");
    expect("null shape", tp_tensor_init(&input, x, TP_DTYPE_FLOAT32, 4, NULL, NULL), TP_ERR_NULL_POINTER, "shape");
    expect("null kernel", tp_pool_desc_init(&desc, TP_POOL_AVG, 2, NULL, NULL, NULL), TP_ERR_NULL_POINTER, "kernel_size");
    expect("null nbytes", tp_tensor_nbytes(&output, NULL), TP_ERR_NULL_POINTER, "nbytes");
    tp_tensor no_data = input;
    no_data.data = NULL;
    expect("null input data", tp_pool(&desc, &no_data, &output), TP_ERR_NULL_POINTER, "input data is null");
    tp_tensor no_output_data = output;
    no_output_data.data = NULL;
    expect("null output data", tp_pool(&desc, &input, &no_output_data), TP_ERR_NULL_POINTER, "output data is null");

    /* Dtypes. */
    tp_tensor bad_dtype = input;
    bad_dtype.dtype = 99;
    expect("unknown dtype", tp_pool(&desc, &bad_dtype, &output), TP_ERR_DTYPE, "input.dtype is 99");
    tp_tensor wrong_output_dtype = output;
    wrong_output_dtype.dtype = TP_DTYPE_FLOAT64;
    expect("output dtype", tp_pool(&desc, &input, &wrong_output_dtype), TP_ERR_DTYPE, "output dtype must be float32");
    if (tp_dtype_size(TP_DTYPE_BFLOAT16) == 2 && tp_dtype_size(0) == 0) passed++; else failed++;

    /* Descriptor values. */
    const int64_t zero_kernel[2] = {0, 2}, negative[2] = {-1, 0}, big[4] = {1, 1, 1, 1};
    expect("kernel 0", tp_pool_desc_init(&desc, TP_POOL_AVG, 2, zero_kernel, NULL, NULL), TP_ERR_INVALID_ARGUMENT,
           "kernel_size must be positive but got (0, 2)");
    expect("stride -1", tp_pool_desc_init(&desc, TP_POOL_AVG, 2, kernel, negative, NULL), TP_ERR_INVALID_ARGUMENT,
           "stride must be positive");
    expect("padding -1", tp_pool_desc_init(&desc, TP_POOL_MAX, 2, kernel, NULL, negative), TP_ERR_INVALID_ARGUMENT,
           "padding must be non-negative but got (-1, 0)");
    expect("spatial dims 4", tp_pool_desc_init(&desc, TP_POOL_MAX, 4, big, NULL, NULL), TP_ERR_INVALID_ARGUMENT,
           "spatial_dims must be 1, 2 or 3 but is 4");
    expect("kind 7", tp_pool_desc_init(&desc, 7, 2, kernel, NULL, NULL), TP_ERR_INVALID_ARGUMENT, "kind is 7");
    tp_pool_desc_init(&desc, TP_POOL_AVG, 2, kernel, NULL, NULL);
    tp_pool_desc hand_filled = desc;
    hand_filled.stride[1] = 0;
    expect("stride 0 in a hand-filled desc", tp_pool(&hand_filled, &input, &output), TP_ERR_INVALID_ARGUMENT,
           "stride must be positive but got (2, 0)");

    /* Shapes. */
    const int64_t shape3[3] = {2, 4, 3}, big_kernel[2] = {9, 2};
    tp_tensor rank3;
    tp_tensor_init(&rank3, x, TP_DTYPE_FLOAT32, 3, shape3, NULL);
    expect("rank mismatch", tp_pool(&desc, &rank3, &output), TP_ERR_SHAPE, "rank 4 (N, H, W, C)");
    expect("rank 9", tp_tensor_init(&rank3, x, TP_DTYPE_FLOAT32, 9, shape, NULL), TP_ERR_SHAPE, "rank");
    tp_pool_desc too_big;
    tp_pool_desc_init(&too_big, TP_POOL_AVG, 2, big_kernel, (const int64_t[]){1, 1}, NULL);
    expect("negative output length", tp_pool_output(&too_big, &input, &output), TP_ERR_SHAPE, "height would be negative");
    tp_tensor wrong_shape = output;
    wrong_shape.shape[1] = 3;
    expect("output shape", tp_pool(&desc, &input, &wrong_shape), TP_ERR_SHAPE, "output shape must be (2, 2, 2, 3)");
    const int64_t negative_shape[4] = {2, -4, 4, 3};
    expect("negative shape", tp_tensor_init(&rank3, x, TP_DTYPE_FLOAT32, 4, negative_shape, NULL),
           TP_ERR_INVALID_ARGUMENT, "shape[1] must be non-negative");

    /* Overflow. */
    const int64_t huge[4] = {INT64_C(1) << 40, INT64_C(1) << 40, 4, 3};
    const int64_t zero_strides[4] = {0, 0, 0, 0};
    tp_tensor overflowing;
    tp_tensor_init(&overflowing, x, TP_DTYPE_FLOAT32, 4, huge, zero_strides);
    tp_tensor overflowing_output;
    expect("overflowing output", tp_pool_output(&desc, &overflowing, &overflowing_output), TP_ERR_OVERFLOW,
           "output element count");
    expect("overflowing contiguous strides", tp_tensor_init(&overflowing, x, TP_DTYPE_FLOAT32, 4, huge, NULL),
           TP_ERR_OVERFLOW, "overflows");

    /* Struct headers. */
    tp_tensor flagged = input;
    flagged.flags = 4;
    expect("reserved flags", tp_pool(&desc, &flagged, &output), TP_ERR_FLAGS, "flags is 0x4");
    tp_pool_desc old = desc;
    old.struct_size = 8;
    expect("struct_size", tp_pool(&old, &input, &output), TP_ERR_VERSION, "struct_size is 8");
    tp_pool_desc flagged_desc = desc;
    flagged_desc.flags = 4;
    expect("desc flags", tp_pool(&flagged_desc, &input, &output), TP_ERR_FLAGS, "other bits are reserved");
    flagged_desc.flags = 0x80000000u | TP_POOL_CEIL_MODE;
    expect("desc high flag", tp_pool(&flagged_desc, &input, &output), TP_ERR_FLAGS, "flags is 0x80000001");

    /* PyTorch's options: count_include_pad=False is for averages; ceil_mode keeps a last
     * window, and an output of the floor rule's shape is then refused. */
    tp_pool_desc max_desc;
    expect("max desc", tp_pool_desc_init(&max_desc, TP_POOL_MAX, 2, kernel, NULL, NULL), TP_OK, "");
    max_desc.flags = TP_POOL_EXCLUDE_PADDING;
    expect("max excluding padding", tp_pool(&max_desc, &input, &output), TP_ERR_INVALID_ARGUMENT,
           "count_include_pad=False applies to average pooling only");
    const int64_t odd_shape[4] = {2, 5, 5, 3}, three[2] = {3, 3};
    float odd[2 * 5 * 5 * 3] = {0};
    tp_tensor odd_input, ceil_output;
    expect("odd input", tp_tensor_init(&odd_input, odd, TP_DTYPE_FLOAT32, 4, odd_shape, NULL), TP_OK, "");
    tp_pool_desc ceil_desc;
    expect("ceil desc", tp_pool_desc_init(&ceil_desc, TP_POOL_AVG, 2, three, kernel, NULL), TP_OK, "");
    ceil_desc.flags = TP_POOL_CEIL_MODE | TP_POOL_EXCLUDE_PADDING;
    expect("ceil output", tp_pool_output(&ceil_desc, &odd_input, &ceil_output), TP_OK, "");
    if (ceil_output.shape[1] != 2 || ceil_output.shape[2] != 2) {
        failed++;
        fprintf(stderr, "FAIL ceil output: (5 + 0 - 3) / 2 rounded up + 1 is 2, not %lld\n", (long long)ceil_output.shape[1]);
    }
    const int64_t four[2] = {4, 4};
    expect("ceil past the input", tp_pool_desc_init(&max_desc, TP_POOL_MAX, 2, four, kernel, NULL), TP_OK, "");
    max_desc.flags = TP_POOL_CEIL_MODE;
    expect("ceil window past the input", tp_pool_output(&max_desc, &odd_input, &ceil_output), TP_OK, "");
    if (ceil_output.shape[1] != 2) {
        failed++;
        fprintf(stderr, "FAIL ceil: (5 - 4) / 2 rounded up + 1 is 2, not %lld\n", (long long)ceil_output.shape[1]);
    }
    /* 2 x 2 windows over 5 x 5: 2 x 2 outputs by the floor rule, 3 x 3 with ceil_mode. */
    expect("ceil 2x2", tp_pool_desc_init(&max_desc, TP_POOL_MAX, 2, kernel, NULL, NULL), TP_OK, "");
    max_desc.flags = TP_POOL_CEIL_MODE;
    ceil_output = output;  /* (2, 2, 2, 3) */
    expect("ceil shape", tp_pool(&max_desc, &odd_input, &ceil_output), TP_ERR_SHAPE, "ceil_mode=True");

    /* Layout. */
    tp_tensor strided_output = output;
    strided_output.strides[3] = 2;
    expect("strided output", tp_pool(&desc, &input, &strided_output), TP_ERR_LAYOUT, "contiguous");
    tp_tensor aliased = output;
    aliased.data = x + 5;
    expect("overlap", tp_pool(&desc, &input, &aliased), TP_ERR_LAYOUT, "overlaps the input");

    /* Output untouched on error. */
    for (int i = 0; i < 24; i++) y[i] = -123.0f;
    wrong_output_dtype.data = y;
    tp_pool(&desc, &input, &wrong_output_dtype);
    int untouched = 1;
    for (int i = 0; i < 24; i++) untouched &= y[i] == -123.0f;
    if (untouched) passed++; else { failed++; fprintf(stderr, "FAIL output written despite an error\n"); }

    /* Threads, versions, status names. */
    expect("threads -1", tp_set_num_threads(-1), TP_ERR_INVALID_ARGUMENT, "thread count");
    expect("threads 2", tp_set_num_threads(2), TP_OK, "");
    if (tp_get_num_threads() == 2) passed++; else failed++;
    tp_set_num_threads(0);
    if (tp_get_api(99) == NULL && strstr(tp_last_error(), "API version 99") != NULL) passed++; else failed++;
    if (tp_get_api(0) == NULL) passed++; else failed++;
    if (strcmp(tp_status_string(TP_ERR_LAYOUT), "TP_ERR_LAYOUT") == 0 &&
        strcmp(tp_status_string((tp_status)999), "TP_ERR_UNKNOWN") == 0)
        passed++;
    else
        failed++;

    /* Remote calls: no daemon, bad handles. */
    tp_client *client = NULL;
    expect("no daemon", tp_client_connect("ipc:///nonexistent-tidepool/x.sock", 100, &client), TP_ERR_CONNECTION,
           "no daemon at ipc:///nonexistent-tidepool/x.sock");
    expect("null client out", tp_client_connect(NULL, 100, NULL), TP_ERR_NULL_POINTER, "client is NULL");
    expect("bad timeout", tp_client_connect("ipc:///x", -5, &client), TP_ERR_INVALID_ARGUMENT, "timeout_ms");
    expect("unknown client handle", tp_client_ping((tp_client *)&desc, NULL), TP_ERR_INVALID_ARGUMENT,
           "not an open tp_client handle");
    expect("unknown buffer handle", tp_buffer_free((tp_buffer *)&desc), TP_ERR_INVALID_ARGUMENT,
           "not an open tp_buffer handle");
    expect("close NULL", tp_client_close(NULL), TP_OK, "");
    if (tp_buffer_data((tp_buffer *)&desc) == NULL && tp_buffer_size(NULL) == 0) passed++; else failed++;
    if (strncmp(tp_default_endpoint(), "ipc://", 6) == 0 || strncmp(tp_default_endpoint(), "tcp://", 6) == 0)
        passed++;
    else
        failed++;

    expect("cancel on no client", tp_client_cancel((tp_client *)&desc, 1), TP_ERR_INVALID_ARGUMENT,
           "not an open tp_client handle");
    if (strcmp(tp_status_string(TP_ERR_PERMISSION), "TP_ERR_PERMISSION") == 0) passed++; else failed++;

    /* Issue 13's reproducers through the C ABI: integers near 2^63 are statuses, never traps. */
    float one = 0;
    const int64_t shape1[3] = {1, 1, 1}, shape0[3] = {1, 0, 1}, row_shape[3] = {1, 4, 3};
    const int64_t huge_kernel[1] = {((int64_t)1 << 62) + 1}, huge_stride[1] = {(int64_t)1 << 62}, two[1] = {2};
    tp_tensor in1, out1;
    tp_pool_desc huge_desc;
    tp_pool_desc_init(&huge_desc, TP_POOL_AVG, 1, huge_kernel, huge_stride, NULL);
    tp_tensor_init(&in1, &one, TP_DTYPE_FLOAT32, 3, shape1, NULL);
    expect("kernel 2^62+1 over one element", tp_pool_output(&huge_desc, &in1, &out1), TP_OK, "");
    if (out1.shape[1] == 0) passed++; else failed++;
    tp_tensor_init(&in1, &one, TP_DTYPE_FLOAT32, 3, shape0, NULL);
    expect("kernel 2^62+1 over nothing", tp_pool_output(&huge_desc, &in1, &out1), TP_ERR_SHAPE, "negative");
    float row[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, pooled[3];
    tp_pool_desc far;
    tp_pool_desc_init(&far, TP_POOL_MAX, 1, two, huge_stride, NULL);
    tp_tensor_init(&in1, row, TP_DTYPE_FLOAT32, 3, row_shape, NULL);
    expect("stride 2^62 with 3 channels", tp_pool_output(&far, &in1, &out1), TP_OK, "");
    out1.data = pooled;
    expect("stride 2^62 pools", tp_pool(&far, &in1, &out1), TP_OK, "");
    if (pooled[0] == 4 && pooled[1] == 5 && pooled[2] == 6) passed++; else failed++;
    /* A view of two positions 1024 elements apart, pooled with kernel 1 and stride and
     * padding 2^53: one window lies in the row, and the stride times the view's W stride is
     * 2^63. Commit b73f943 computed that product, checked, in the kernels that fold a few
     * channels' windows in registers, and trapped (the process died). float32 max reads in
     * place; int8 averages (float32 out) and float16 max widen first. */
    {
        const int64_t far_shape[3] = {1, 2, 1}, far_strides[3] = {2048, 1024, 1};
        const int64_t one_tap[1] = {1}, far_step[1] = {INT64_C(1) << 53};
        tp_pool_desc spread;
        /* The output first, the view after it: every element the view claims is readable. */
        float *cells = calloc(4 + 1025, sizeof(float));
        cells[4] = 7;
        cells[4 + 1024] = 9;
        tp_pool_desc_init(&spread, TP_POOL_MAX, 1, one_tap, far_step, far_step);
        tp_tensor_init(&in1, cells + 4, TP_DTYPE_FLOAT32, 3, far_shape, far_strides);
        expect("stride 2^53 over a 1024-strided view", tp_pool_output(&spread, &in1, &out1), TP_OK, "");
        out1.data = cells;
        expect("stride 2^53 over a 1024-strided view pools", tp_pool(&spread, &in1, &out1), TP_OK, "");
        if (out1.shape[1] == 3 && isinf(cells[0]) && cells[1] == 7 && isinf(cells[2])) passed++; else failed++;
        uint16_t *halves = calloc(4 + 1025, sizeof(uint16_t));
        halves[4] = 0x4700; /* 7.0 */
        tp_tensor_init(&in1, halves + 4, TP_DTYPE_FLOAT16, 3, far_shape, far_strides);
        tp_pool_output(&spread, &in1, &out1);
        out1.data = halves;
        expect("float16 max over a 1024-strided view", tp_pool(&spread, &in1, &out1), TP_OK, "");
        if (halves[0] == 0xFC00 && halves[1] == 0x4700 && halves[2] == 0xFC00) passed++; else failed++;
        int8_t small[1025] = {-7};
        tp_pool_desc_init(&spread, TP_POOL_AVG, 1, one_tap, far_step, far_step);
        tp_tensor_init(&in1, small, TP_DTYPE_INT8, 3, far_shape, far_strides);
        tp_pool_output(&spread, &in1, &out1);
        out1.data = cells; /* averages of integers are float32 */
        cells[0] = cells[2] = 1;
        expect("int8 average over a 1024-strided view", tp_pool(&spread, &in1, &out1), TP_OK, "");
        if (out1.dtype == TP_DTYPE_FLOAT32 && cells[0] == 0 && cells[1] == -7 && cells[2] == 0) passed++; else failed++;
        free(cells);
        free(halves);
    }
    const int64_t wide_kernel[1] = {(int64_t)1 << 30}, wider_stride[1] = {(int64_t)1 << 31};
    tp_pool_desc wide;
    tp_pool_desc_init(&wide, TP_POOL_MAX, 1, wide_kernel, wider_stride, wide_kernel);
    tp_tensor_init(&in1, &one, TP_DTYPE_FLOAT32, 3, shape1, NULL);
    tp_pool_output(&wide, &in1, &out1);
    out1.data = pooled;
    expect("scratch of a 2^30 window over one element", tp_pool(&wide, &in1, &out1), TP_ERR_NO_MEMORY, "scratch");

    /* A caller of API version 2 (compiled before tp_client_cancel) still gets its table. */
    const tp_api *v2 = tp_get_api(2);
    if (v2 != NULL && v2->api_version >= 2 && v2->client_wait == tp_client_wait) passed++; else failed++;
    const tp_api *v3 = tp_get_api(3);
    if (v3 != NULL && v3->struct_size >= offsetof(tp_api, client_cancel) + sizeof v3->client_cancel &&
        v3->client_cancel == tp_client_cancel)
        passed++;
    else
        failed++;
    const tp_api *v4 = tp_get_api(4);
    if (v4 != NULL && v4->struct_size >= offsetof(tp_api, cpu_level) + sizeof v4->cpu_level &&
        v4->cpu_level == tp_cpu_level)
        passed++;
    else
        failed++;
    const tp_api *v5 = tp_get_api(5);
    if (v5 != NULL && v5->struct_size >= offsetof(tp_api, pool_backward) + sizeof v5->pool_backward &&
        v5->pool_backward == tp_pool_backward)
        passed++;
    else
        failed++;
    const tp_api *v6 = tp_get_api(6);
    if (v6 != NULL && v6->struct_size >= offsetof(tp_api, client_connect_v2) + sizeof v6->client_connect_v2 &&
        v6->client_connect_v2 == tp_client_connect_v2)
        passed++;
    else
        failed++;
    expect("API version 7", tp_get_api(7) == NULL ? TP_ERR_VERSION : TP_OK, TP_ERR_VERSION, "serves versions 1 to 6");

    /* tp_client_connect_v2's options are checked before anything is connected to. */
    {
        tp_client *client = NULL;
        tp_client_options options = {.struct_size = sizeof options, .timeout_ms = 100};
        expect("connect_v2, client NULL", tp_client_connect_v2("tcp://127.0.0.1:1", &options, NULL), TP_ERR_NULL_POINTER,
               "client is NULL");
        options.struct_size = 8;
        expect("connect_v2, old options", tp_client_connect_v2("tcp://127.0.0.1:1", &options, &client), TP_ERR_VERSION,
               "tp_client_options.struct_size is 8");
        options.struct_size = sizeof options;
        options.flags = 1;
        expect("connect_v2, flags", tp_client_connect_v2("tcp://127.0.0.1:1", &options, &client), TP_ERR_FLAGS,
               "tp_client_options.flags is 0x1");
        options.flags = 0;
        options.reserved = 3;
        expect("connect_v2, reserved", tp_client_connect_v2("tcp://127.0.0.1:1", &options, &client),
               TP_ERR_INVALID_ARGUMENT, "reserved is 3");
        options.reserved = 0;
        options.timeout_ms = -2;
        expect("connect_v2, timeout", tp_client_connect_v2("tcp://127.0.0.1:1", &options, &client),
               TP_ERR_INVALID_ARGUMENT, "timeout_ms must be -1");
        options.timeout_ms = 100;
        options.curve_server_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
        options.curve_client_cert = "";
        expect("connect_v2, server key alone", tp_client_connect_v2("tcp://127.0.0.1:1", &options, &client),
               TP_ERR_INVALID_ARGUMENT, "but not curve_client_cert");
        options.curve_client_cert = "/nonexistent/client.key_secret";
        expect("connect_v2, missing certificate", tp_client_connect_v2("tcp://127.0.0.1:1", &options, &client),
               TP_ERR_INVALID_ARGUMENT, "/nonexistent/client.key_secret");
        options.curve_server_key = "not a key";
        expect("connect_v2, server key neither Z85 nor a file", tp_client_connect_v2("tcp://127.0.0.1:1", &options, &client),
               TP_ERR_INVALID_ARGUMENT, "not a key");
        expect("connect_v2, keys on ipc", tp_client_connect_v2("ipc:///nonexistent/tidepool.sock", &options, &client),
               TP_ERR_INVALID_ARGUMENT, "are for tcp:// endpoints");
        if (client == NULL) passed++; else failed++;
    }

    /* The gradient of MaxPool1d(2, stride=1) on [1, 3, 3, 2] for a cotangent of ones: MLX's
     * split [0, 1.5, 1.5, 0], PyTorch's first [0, 2, 1, 0]. */
    {
        float xs[4] = {1, 3, 3, 2}, ones[3] = {1, 1, 1}, grad[4] = {9, 9, 9, 9};
        const int64_t k2[1] = {2}, s1[1] = {1}, in_shape[3] = {1, 4, 1}, out_shape[3] = {1, 3, 1};
        tp_pool_desc max1;
        tp_pool_desc_init(&max1, TP_POOL_MAX, 1, k2, s1, NULL);
        tp_tensor x, g, gx;
        tp_tensor_init(&x, xs, TP_DTYPE_FLOAT32, 3, in_shape, NULL);
        tp_tensor_init(&g, ones, TP_DTYPE_FLOAT32, 3, out_shape, NULL);
        tp_tensor_init(&gx, grad, TP_DTYPE_FLOAT32, 3, in_shape, NULL);
        expect("backward, split", tp_pool_backward(&max1, &x, &g, &gx, NULL), TP_OK, "");
        if (grad[0] == 0 && grad[1] == 1.5f && grad[2] == 1.5f && grad[3] == 0) passed++; else failed++;
        tp_backward_options options = {sizeof options, 0, TP_TIES_FIRST, 0};
        expect("backward, first", tp_pool_backward(&max1, &x, &g, &gx, &options), TP_OK, "");
        if (grad[0] == 0 && grad[1] == 2 && grad[2] == 1 && grad[3] == 0) passed++; else failed++;
        /* The same structs again (tp_pool_backward keeps what it checked for them): other data,
         * other answers; the rule changed in place, or the options dropped, is read again; a
         * gradient placed over the input or the cotangent, or reshaped in place, is refused. */
        {
            float ys[4] = {5, 4, 4, 6};
            x.data = ys;
            expect("backward, same structs, other data", tp_pool_backward(&max1, &x, &g, &gx, &options), TP_OK, "");
            if (grad[0] == 1 && grad[1] == 1 && grad[2] == 0 && grad[3] == 1) passed++; else failed++;
            options.max_ties = TP_TIES_SPLIT;
            expect("backward, rule changed in place", tp_pool_backward(&max1, &x, &g, &gx, &options), TP_OK, "");
            if (grad[0] == 1 && grad[1] == 0.5f && grad[2] == 0.5f && grad[3] == 1) passed++; else failed++;
            options.max_ties = TP_TIES_FIRST;
            expect("backward, first again", tp_pool_backward(&max1, &x, &g, &gx, &options), TP_OK, "");
            expect("backward, options dropped", tp_pool_backward(&max1, &x, &g, &gx, NULL), TP_OK, "");
            if (grad[0] == 1 && grad[1] == 0.5f && grad[2] == 0.5f && grad[3] == 1) passed++; else failed++;
            gx.data = ys;
            expect("backward, same structs, gradient over the input", tp_pool_backward(&max1, &x, &g, &gx, NULL),
                   TP_ERR_LAYOUT, "grad_input memory overlaps input");
            g.data = grad;
            gx.data = grad;
            expect("backward, same structs, gradient over the cotangent", tp_pool_backward(&max1, &x, &g, &gx, NULL),
                   TP_ERR_LAYOUT, "grad_input memory overlaps grad_output");
            g.data = ones;
            gx.shape[1] = 3;
            expect("backward, gradient reshaped in place", tp_pool_backward(&max1, &x, &g, &gx, NULL), TP_ERR_SHAPE,
                   "grad_input shape must be (1, 4, 1)");
            gx.shape[1] = 4;
            x.data = xs;
        }
        options.max_ties = 7;
        expect("backward, unknown tie rule", tp_pool_backward(&max1, &x, &g, &gx, &options), TP_ERR_INVALID_ARGUMENT,
               "max_ties is 7");
        options.max_ties = TP_TIES_SPLIT;
        options.struct_size = 4;
        expect("backward, old options", tp_pool_backward(&max1, &x, &g, &gx, &options), TP_ERR_VERSION,
               "tp_backward_options.struct_size is 4");
        expect("backward, grad_output NULL", tp_pool_backward(&max1, &x, NULL, &gx, NULL), TP_ERR_NULL_POINTER,
               "grad_output is NULL");
        expect("backward, in place", tp_pool_backward(&max1, &x, &g, &x, NULL), TP_ERR_LAYOUT, "overlaps input");
        int8_t bytes[4] = {1, 3, 3, 2}, gbytes[3] = {1, 1, 1}, gxbytes[4];
        tp_tensor_init(&x, bytes, TP_DTYPE_INT8, 3, in_shape, NULL);
        tp_tensor_init(&g, gbytes, TP_DTYPE_INT8, 3, out_shape, NULL);
        tp_tensor_init(&gx, gxbytes, TP_DTYPE_INT8, 3, in_shape, NULL);
        expect("backward of int8", tp_pool_backward(&max1, &x, &g, &gx, NULL), TP_ERR_DTYPE, "floating-point inputs");
    }
    /* The level is one of the two built, and TIDEPOOL_CPU=baseline (run_tests.sh runs this
     * program both ways) is honoured. */
    const char *level = tp_cpu_level();
    const char *forced = getenv("TIDEPOOL_CPU");
    if (strcmp(level, "x86-64") == 0 || strcmp(level, "x86-64-v3") == 0) passed++; else failed++;
    if (forced == NULL || strcmp(forced, "baseline") != 0 || strcmp(level, "x86-64") == 0) passed++; else failed++;

    /* tp_last_error is per thread: another thread's failure does not replace ours. */
    tp_pool(NULL, &input, &output);
    pthread_t thread;
    pthread_create(&thread, NULL, error_in_other_thread, NULL);
    pthread_join(thread, NULL);
    expect("thread-local message", TP_ERR_NULL_POINTER, TP_ERR_NULL_POINTER, "desc is NULL");

    printf("errors_test: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
