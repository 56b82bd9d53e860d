/* engine_bench.c - in-process pooling from C against the bytes-moved floor.
 *
 * For each case: the floor is the median time of memcpy of the input, scaled to the bytes a
 * pooling pass must move (input read + output written), as the time of x.copy() would be;
 * the engine is the median time of tp_pool with 1 and with 2 threads. Prints one JSON
 * object per line.
 *
 * Usage: engine_bench CASES [DTYPES] [FILTER]
 *   CASES: benchmarks/cases.txt, the case list shared with engine_bench.py;
 *   DTYPES: "float32" (default) or "all"; FILTER: run only cases whose name contains it.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "tidepool.h"

typedef struct {
    char name[128];
    int kind;
    int64_t shape[5];
    int64_t kernel, stride, padding;
} bench_case;

#define MAX_CASES 64

/* Reads the case list (see benchmarks/cases.txt); names are those engine_bench.py prints. */
static int read_cases(const char *path, bench_case *cases) {
    FILE *file = fopen(path, "r");
    if (!file) {
        perror(path);
        exit(1);
    }
    char line[256], layer[32];
    int count = 0;
    while (fgets(line, sizeof line, file)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        bench_case *c = &cases[count];
        long long n[5], k, s, p;
        if (sscanf(line, "%31s %lld,%lld,%lld,%lld,%lld %lld %lld %lld", layer, &n[0], &n[1], &n[2], &n[3], &n[4], &k, &s, &p)
                != 9 || count == MAX_CASES) {
            fprintf(stderr, "%s: cannot read case: %s", path, line);
            exit(1);
        }
        c->kind = strncmp(layer, "Max", 3) == 0 ? TP_POOL_MAX : TP_POOL_AVG;
        for (int i = 0; i < 5; i++) c->shape[i] = n[i];
        c->kernel = k, c->stride = s, c->padding = p;
        if (p)
            snprintf(c->name, sizeof c->name, "%s k%lld s%lld p%lld, (%lld,%lld,%lld,%lld,%lld)", layer, k, s, p, n[0], n[1], n[2], n[3], n[4]);
        else
            snprintf(c->name, sizeof c->name, "%s k%lld s%lld, (%lld,%lld,%lld,%lld,%lld)", layer, k, s, n[0], n[1], n[2], n[3], n[4]);
        count++;
    }
    fclose(file);
    return count;
}

static const struct {
    const char *name;
    int code;
} DTYPES[] = {
    {"float32", TP_DTYPE_FLOAT32}, {"float16", TP_DTYPE_FLOAT16}, {"bfloat16", TP_DTYPE_BFLOAT16},
    {"float64", TP_DTYPE_FLOAT64}, {"int8", TP_DTYPE_INT8},       {"uint8", TP_DTYPE_UINT8},
    {"int16", TP_DTYPE_INT16},     {"int32", TP_DTYPE_INT32},     {"int64", TP_DTYPE_INT64},
};

#define CHECK(call)                                                                         \
    do {                                                                                    \
        tp_status s_ = (call);                                                              \
        if (s_ != TP_OK) {                                                                  \
            fprintf(stderr, "%s: %s\n", tp_status_string(s_), tp_last_error());             \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

/* Runs `count` timed repetitions (after one warm-up) and returns the median in ms. */
static double time_pool(const tp_pool_desc *desc, const tp_tensor *input, const tp_tensor *output, int count) {
    double samples[64];
    CHECK(tp_pool(desc, input, output));
    for (int i = 0; i < count; i++) {
        double t0 = now();
        CHECK(tp_pool(desc, input, output));
        samples[i] = (now() - t0) * 1e3;
    }
    return percentile(samples, count, 0.5);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s CASES [float32|all] [FILTER]\n", argv[0]);
        return 2;
    }
    static bench_case cases[MAX_CASES];
    int case_count = read_cases(argv[1], cases);
    int all_dtypes = argc > 2 && strcmp(argv[2], "all") == 0;
    const char *filter = argc > 3 ? argv[3] : "";
    int dtype_count = all_dtypes ? (int)(sizeof DTYPES / sizeof DTYPES[0]) : 1;
    for (int c = 0; c < case_count; c++) {
        if (!strstr(cases[c].name, filter)) continue;
        for (int t = 0; t < dtype_count; t++) {
            const bench_case *bc = &cases[c];
            tp_pool_desc desc;
            tp_tensor input, output;
            const int64_t k[3] = {bc->kernel, bc->kernel, bc->kernel}, s[3] = {bc->stride, bc->stride, bc->stride},
                          p[3] = {bc->padding, bc->padding, bc->padding};
            CHECK(tp_pool_desc_init(&desc, bc->kind, 3, k, s, p));
            CHECK(tp_tensor_init(&input, NULL, DTYPES[t].code, 5, bc->shape, NULL));
            CHECK(tp_pool_output(&desc, &input, &output));
            size_t in_bytes, out_bytes;
            CHECK(tp_tensor_nbytes(&input, &in_bytes));
            CHECK(tp_tensor_nbytes(&output, &out_bytes));
            unsigned char *x = malloc(in_bytes), *copy = malloc(in_bytes), *y = malloc(out_bytes);
            if (!x || !copy || !y) return 1;
            /* Small integers are valid in every dtype (as floats too, bit patterns aside). */
            for (size_t i = 0; i < in_bytes; i++) x[i] = (unsigned char)((i * 2654435761u) >> 24) & 0x3f;
            memset(copy, 0, in_bytes);
            memset(y, 0, out_bytes);
            input.data = x;
            output.data = y;
            int runs = in_bytes < (8u << 20) ? 41 : 11;

            double copies[64];
            memcpy(copy, x, in_bytes);
            for (int i = 0; i < runs; i++) {
                double t0 = now();
                memcpy(copy, x, in_bytes);
                copies[i] = (now() - t0) * 1e3;
            }
            double floor_ms = percentile(copies, runs, 0.5) * (double)(in_bytes + out_bytes) / (2.0 * (double)in_bytes);

            CHECK(tp_set_num_threads(1));
            double one = time_pool(&desc, &input, &output, runs);
            CHECK(tp_set_num_threads(2));
            double two = time_pool(&desc, &input, &output, runs);
            CHECK(tp_set_num_threads(0));
            printf("{\"case\": \"%s\", \"dtype\": \"%s\", \"bytes\": %zu, \"floor_ms\": %.4f, \"threads1_ms\": %.4f, "
                   "\"threads2_ms\": %.4f}\n",
                   bc->name, DTYPES[t].name, in_bytes + out_bytes, floor_ms, one, two);
            fflush(stdout);
            free(x);
            free(copy);
            free(y);
        }
    }
    return 0;
}
