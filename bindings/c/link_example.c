/* link_example.c - link with -ltidepool and call the C ABI directly: MaxPool2d with
 * padding over an int16 image read through a transposed (strided) view, and AvgPool1d
 * over uint8 (which returns float32). Outputs are checked against values computed here.
 */
#include <stdio.h>
#include <string.h>

#include "tidepool.h"

static int failures = 0;

#define CHECK(cond, ...)                                  \
    do {                                                  \
        if (!(cond)) {                                    \
            fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                 \
            fputc('\n', stderr);                          \
            failures++;                                   \
        }                                                 \
    } while (0)

int main(void) {
    CHECK(tp_version() == TP_VERSION, "header version %d, library version %u", TP_VERSION, tp_version());

    /* (1, 3, 4, 1) int16 image stored as its transpose (1, 4, 3, 1). */
    int16_t stored[12];
    for (int i = 0; i < 12; i++) stored[i] = (int16_t)(i * 37 % 11 - 5);
    const int64_t shape[4] = {1, 3, 4, 1}, strides[4] = {12, 1, 3, 1};
    tp_tensor input, output;
    tp_pool_desc desc;
    const int64_t kernel[2] = {2, 3}, stride[2] = {1, 2}, padding[2] = {1, 1};
    tp_status status = tp_tensor_init(&input, stored, TP_DTYPE_INT16, 4, shape, strides);
    if (status == TP_OK) status = tp_pool_desc_init(&desc, TP_POOL_MAX, 2, kernel, stride, padding);
    if (status == TP_OK) status = tp_pool_output(&desc, &input, &output);
    CHECK(status == TP_OK, "setup: %s", tp_last_error());
    /* H: (3 + 2 - 2) / 1 + 1 = 4; W: (4 + 2 - 3) / 2 + 1 = 2 */
    CHECK(output.rank == 4 && output.shape[1] == 4 && output.shape[2] == 2 && output.dtype == TP_DTYPE_INT16,
          "output shape (%lld, %lld, %lld, %lld)", (long long)output.shape[0], (long long)output.shape[1],
          (long long)output.shape[2], (long long)output.shape[3]);
    int16_t result[8];
    output.data = result;
    status = tp_pool(&desc, &input, &output);
    CHECK(status == TP_OK, "tp_pool: %s", tp_last_error());
    for (int oh = 0; oh < 4; oh++)
        for (int ow = 0; ow < 2; ow++) {
            int best = -32768;
            for (int h = oh - 1; h < oh + 1; h++)
                for (int w = 2 * ow - 1; w < 2 * ow + 2; w++)
                    if (h >= 0 && h < 3 && w >= 0 && w < 4 && stored[w * 3 + h] > best) best = stored[w * 3 + h];
            CHECK(result[oh * 2 + ow] == best, "max[%d,%d] = %d, expected %d", oh, ow, result[oh * 2 + ow], best);
        }

    /* AvgPool1d(kernel_size=3, stride=1, padding=1) on uint8 gives float32. */
    uint8_t bytes[5] = {255, 1, 2, 3, 250};
    const int64_t shape1[3] = {1, 5, 1}, k1 = 3, s1 = 1, p1 = 1;
    tp_tensor_init(&input, bytes, TP_DTYPE_UINT8, 3, shape1, NULL);
    tp_pool_desc_init(&desc, TP_POOL_AVG, 1, &k1, &s1, &p1);
    status = tp_pool_output(&desc, &input, &output);
    CHECK(status == TP_OK && output.dtype == TP_DTYPE_FLOAT32 && output.shape[1] == 5, "avg uint8 output");
    float means[5];
    output.data = means;
    status = tp_pool(&desc, &input, &output);
    CHECK(status == TP_OK, "tp_pool: %s", tp_last_error());
    const float expected[5] = {256.0f / 3, 258.0f / 3, 6.0f / 3, 255.0f / 3, 253.0f / 3};
    for (int i = 0; i < 5; i++) CHECK(means[i] == expected[i], "mean[%d] = %.9g, expected %.9g", i, means[i], expected[i]);

    printf("link_example: %s\n", failures == 0 ? "all outputs match" : "MISMATCH");
    return failures == 0 ? 0 : 1;
}
