/* compat_v2_test.c - a caller built against Tidepool 0.1.0's header (API version 2, kept
 * verbatim in compat/tidepool-0.1.0.h) runs against today's library: the ABI only grows.
 *
 * Checks, linking the library directly and through tp_get_api(2): the structs it fills
 * (tp_tensor, tp_pool_desc at 0.1.0's sizes) are accepted, pooling gives the values of
 * MLX's documented AvgPool2d/MaxPool2d examples, errors keep their codes, the version-2
 * table has every field the old header declares, and the client calls of version 2 answer
 * (TP_ERR_CONNECTION for an endpoint with no daemon). Exits non-zero on any failure.
 */
#include <stdio.h>
#include <string.h>

#include "compat/tidepool-0.1.0.h"

static int failures = 0;

#define CHECK(condition)                                                                   \
    do {                                                                                   \
        if (!(condition)) {                                                                \
            fprintf(stderr, "FAILED %s:%d: %s (%s)\n", __FILE__, __LINE__, #condition,     \
                    tp_last_error());                                                      \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

/* AvgPool2d(2, 2) and MaxPool2d(2, 2) of arange(16) as (1, 4, 4, 1): MLX's documented examples. */
static void pool_examples(tp_status (*pool)(const tp_pool_desc *, const tp_tensor *, const tp_tensor *),
                          tp_status (*desc_init)(tp_pool_desc *, int32_t, int32_t, const int64_t *,
                                                 const int64_t *, const int64_t *),
                          tp_status (*tensor_init)(tp_tensor *, void *, int32_t, int32_t, const int64_t *,
                                                   const int64_t *)) {
    float x[16], y[4];
    for (int i = 0; i < 16; i++) x[i] = (float)i;
    const int64_t shape[4] = {1, 4, 4, 1}, out_shape[4] = {1, 2, 2, 1}, kernel[2] = {2, 2};
    tp_tensor input, output;
    tp_pool_desc desc;
    CHECK(tensor_init(&input, x, TP_DTYPE_FLOAT32, 4, shape, NULL) == TP_OK);
    CHECK(tensor_init(&output, y, TP_DTYPE_FLOAT32, 4, out_shape, NULL) == TP_OK);
    CHECK(input.struct_size == sizeof(tp_tensor));

    CHECK(desc_init(&desc, TP_POOL_AVG, 2, kernel, NULL, NULL) == TP_OK);
    CHECK(pool(&desc, &input, &output) == TP_OK);
    const float avg[4] = {2.5f, 4.5f, 10.5f, 12.5f};
    CHECK(memcmp(y, avg, sizeof y) == 0);

    CHECK(desc_init(&desc, TP_POOL_MAX, 2, kernel, NULL, NULL) == TP_OK);
    CHECK(pool(&desc, &input, &output) == TP_OK);
    const float max[4] = {5, 7, 13, 15};
    CHECK(memcmp(y, max, sizeof y) == 0);

    /* Errors keep their codes: a wrong output shape, a kernel larger than the padded input. */
    output.shape[1] = 3;
    CHECK(pool(&desc, &input, &output) == TP_ERR_SHAPE);
    const int64_t big[2] = {5, 5};
    CHECK(desc_init(&desc, TP_POOL_MAX, 2, big, NULL, NULL) == TP_OK);
    output.shape[1] = 2;
    CHECK(pool(&desc, &input, &output) == TP_ERR_SHAPE);
}

int main(int argc, char **argv) {
    const char *no_daemon = argc > 1 ? argv[1] : "ipc:///nonexistent-tidepool-dir/none.sock";

    /* Linked directly. */
    CHECK(tp_version() >= TP_MAKE_VERSION(0, 1, 0));
    pool_examples(tp_pool, tp_pool_desc_init, tp_tensor_init);

    /* Through the version-2 table. */
    const tp_api *api = tp_get_api(2);
    CHECK(api != NULL);
    if (api == NULL) return 1;
    CHECK(api->api_version >= 2);
    CHECK(api->struct_size >= sizeof(tp_api)); /* every field this header declares is there */
    CHECK(api->version() == tp_version());
    CHECK(strcmp(api->status_string(TP_ERR_SHAPE), tp_status_string(TP_ERR_SHAPE)) == 0);
    pool_examples(api->pool, api->pool_desc_init, api->tensor_init);
    CHECK(api->set_num_threads(1) == TP_OK && api->get_num_threads() == 1);

    tp_client *client = NULL;
    CHECK(api->client_connect(no_daemon, 200, &client) == TP_ERR_CONNECTION);
    CHECK(client == NULL);
    CHECK(api->default_endpoint() != NULL);

    if (failures == 0) printf("a version-2 caller (0.1.0 header) works against libtidepool %s\n", tp_version_string());
    return failures != 0;
}
