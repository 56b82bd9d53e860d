/* tiny_bench.c - what a tiny pooling costs from C: AvgPool2d(2) on a (1, 8, 8, 4) float32
 * tensor, tp_pool called in a loop with the same structs (the usual caller's pattern) and
 * with a fresh descriptor and tensors built each call; and the gradient of AvgPool2d(2) and
 * MaxPool2d(2) on it (tp_pool_backward, the same structs each call). Prints the median per
 * call of 5 runs of 200,000 calls each, in microseconds, as a Markdown table row per pattern. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>

#include "bench_util.h"
#include "tidepool.h"

enum { CALLS = 200000, RUNS = 5 };

static float input_data[8 * 8 * 4], output_data[4 * 4 * 4], gradient_data[8 * 8 * 4];
static const int64_t shape[4] = {1, 8, 8, 4}, kernel[2] = {2, 2};

static int build(tp_pool_desc *desc, tp_tensor *input, tp_tensor *output) {
    if (tp_pool_desc_init(desc, TP_POOL_AVG, 2, kernel, NULL, NULL) != TP_OK) return 0;
    if (tp_tensor_init(input, input_data, TP_DTYPE_FLOAT32, 4, shape, NULL) != TP_OK) return 0;
    if (tp_pool_output(desc, input, output) != TP_OK) return 0;
    output->data = output_data;
    return 1;
}

/* Median microseconds per call of `fresh` ? built-per-call : reused structs. */
static double measure(int fresh) {
    double runs[RUNS];
    tp_pool_desc desc;
    tp_tensor input, output;
    if (!build(&desc, &input, &output)) return -1;
    for (int run = 0; run < RUNS; run++) {
        double start = now();
        for (int i = 0; i < CALLS; i++) {
            if (fresh && !build(&desc, &input, &output)) return -1;
            if (tp_pool(&desc, &input, &output) != TP_OK) return -1;
        }
        runs[run] = (now() - start) / CALLS * 1e6;
    }
    return percentile(runs, RUNS, 0.5);
}

/* Median microseconds per tp_pool_backward of pooling `kind`, the output's shape and values
 * as the cotangent, the same structs each call. */
static double measure_backward(int kind) {
    double runs[RUNS];
    tp_pool_desc desc;
    tp_tensor input, cotangent, gradient;
    if (!build(&desc, &input, &cotangent)) return -1;
    if (tp_pool_desc_init(&desc, kind, 2, kernel, NULL, NULL) != TP_OK) return -1;
    if (tp_tensor_init(&gradient, gradient_data, TP_DTYPE_FLOAT32, 4, shape, NULL) != TP_OK) return -1;
    for (int run = 0; run < RUNS; run++) {
        double start = now();
        for (int i = 0; i < CALLS; i++) {
            if (tp_pool_backward(&desc, &input, &cotangent, &gradient, NULL) != TP_OK) return -1;
        }
        runs[run] = (now() - start) / CALLS * 1e6;
    }
    return percentile(runs, RUNS, 0.5);
}

int main(void) {
    /* Ties in every max window: i / 8 is equal for the two columns of a window. */
    for (int i = 0; i < 8 * 8 * 4; i++) input_data[i] = (float)(i / 8);
    for (int i = 0; i < 4 * 4 * 4; i++) output_data[i] = 1.0f + (float)i;
    double reused = measure(0), fresh = measure(1);
    double average = measure_backward(TP_POOL_AVG), max = measure_backward(TP_POOL_MAX);
    if (reused < 0 || fresh < 0 || average < 0 || max < 0) {
        fprintf(stderr, "tiny_bench: %s\n", tp_last_error());
        return 1;
    }
    printf("| C, tp_pool, the same structs each call | %.2f us |\n", reused);
    printf("| C, tp_pool_desc_init + tp_tensor_init + tp_pool_output + tp_pool each call | %.2f us |\n", fresh);
    printf("| C, tp_pool_backward of AvgPool2d(2), the same structs each call | %.2f us |\n", average);
    printf("| C, tp_pool_backward of MaxPool2d(2) (ties split), the same structs each call | %.2f us |\n", max);
    return 0;
}
