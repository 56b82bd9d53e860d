#define _POSIX_C_SOURCE 200809L
/* daemon_bench.c - tidepoold through its C client, measured side by side in one run:
 *   1. round-trip latency of a tiny job over the endpoint (p50, p99);
 *   2. jobs per second with 8 clients (threads), each with its own connection;
 *   3. 64 MB jobs ((4, 32, 64, 64, 32) float32 in shared memory; AvgPool3d k2 s2 and
 *      k3 s1 p1) through the daemon against the same jobs in-process.
 * Usage: daemon_bench ENDPOINT
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "tidepool.h"

#define CHECK(call)                                                                              \
    do {                                                                                         \
        tp_status s_ = (call);                                                                   \
        if (s_ != TP_OK) {                                                                       \
            fprintf(stderr, "%s: %s: %s\n", #call, tp_status_string(s_), tp_last_error());       \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

/* A tiny job, AvgPool1d(2) over (1, 8, 1) float32, with both tensors in shared memory. */
typedef struct {
    tp_client *client;
    tp_buffer *buffer;
    tp_pool_desc desc;
    tp_tensor input, output;
} tiny_job;

static void tiny_setup(tiny_job *job, const char *endpoint) {
    const int64_t shape[3] = {1, 8, 1}, kernel = 2;
    CHECK(tp_client_connect(endpoint, 10000, &job->client));
    CHECK(tp_client_alloc(job->client, 4096, &job->buffer));
    float *memory = tp_buffer_data(job->buffer);
    for (int i = 0; i < 8; i++) memory[i] = (float)i;
    CHECK(tp_pool_desc_init(&job->desc, TP_POOL_AVG, 1, &kernel, NULL, NULL));
    CHECK(tp_tensor_init(&job->input, memory, TP_DTYPE_FLOAT32, 3, shape, NULL));
    CHECK(tp_pool_output(&job->desc, &job->input, &job->output));
    job->output.data = memory + 64;
}

static void tiny_teardown(tiny_job *job) {
    CHECK(tp_buffer_free(job->buffer));
    CHECK(tp_client_close(job->client));
}

typedef struct {
    const char *endpoint;
    int jobs;
    pthread_barrier_t *start;
} worker_args;

static void *worker(void *raw) {
    worker_args *args = raw;
    tiny_job job;
    tiny_setup(&job, args->endpoint);
    pthread_barrier_wait(args->start);
    for (int i = 0; i < args->jobs; i++) CHECK(tp_client_pool(job.client, &job.desc, &job.input, &job.output));
    tiny_teardown(&job);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: daemon_bench ENDPOINT\n");
        return 2;
    }
    const char *endpoint = argv[1];

    /* 1. Tiny-job latency. */
    enum { WARMUP = 500, SAMPLES = 5000 };
    tiny_job job;
    tiny_setup(&job, endpoint);
    static double latency[SAMPLES];
    for (int i = 0; i < WARMUP; i++) CHECK(tp_client_pool(job.client, &job.desc, &job.input, &job.output));
    for (int i = 0; i < SAMPLES; i++) {
        double t0 = now();
        CHECK(tp_client_pool(job.client, &job.desc, &job.input, &job.output));
        latency[i] = now() - t0;
    }
    double p50 = percentile(latency, SAMPLES, 0.50), p99 = percentile(latency, SAMPLES, 0.99);
    tiny_teardown(&job);

    /* 2. Throughput with 8 clients. */
    enum { CLIENTS = 8, JOBS_PER_CLIENT = 2000 };
    pthread_t threads[CLIENTS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, CLIENTS + 1);
    worker_args args = {endpoint, JOBS_PER_CLIENT, &start};
    for (int i = 0; i < CLIENTS; i++) pthread_create(&threads[i], NULL, worker, &args);
    pthread_barrier_wait(&start);
    double t0 = now();
    for (int i = 0; i < CLIENTS; i++) pthread_join(threads[i], NULL);
    double jobs_per_second = CLIENTS * JOBS_PER_CLIENT / (now() - t0);

    /* 3. 64 MB jobs, remote against in-process, alternating runs: the cheapest (k2 s2, about
     * 2 ms of compute) and an overlapping one (k3 s1 p1), so the daemon's fixed cost shows. */
    const int64_t shape[5] = {4, 32, 64, 64, 32};
    const int64_t kernels[2] = {2, 3}, strides[2] = {2, 1}, paddings[2] = {0, 1};
    double remote_ms[2], local_ms[2];
    size_t moved[2];
    int same = 1;
    tp_client *client;
    CHECK(tp_client_connect(endpoint, 60000, &client));
    for (int c = 0; c < 2; c++) {
        const int64_t k[3] = {kernels[c], kernels[c], kernels[c]}, s[3] = {strides[c], strides[c], strides[c]},
                      p[3] = {paddings[c], paddings[c], paddings[c]};
        tp_pool_desc desc;
        tp_tensor input, output, local;
        size_t in_bytes, out_bytes;
        CHECK(tp_pool_desc_init(&desc, TP_POOL_AVG, 3, k, s, p));
        CHECK(tp_tensor_init(&input, NULL, TP_DTYPE_FLOAT32, 5, shape, NULL));
        CHECK(tp_pool_output(&desc, &input, &output));
        CHECK(tp_tensor_nbytes(&input, &in_bytes));
        CHECK(tp_tensor_nbytes(&output, &out_bytes));
        tp_buffer *in_buffer, *out_buffer;
        CHECK(tp_client_alloc(client, in_bytes, &in_buffer));
        CHECK(tp_client_alloc(client, out_bytes, &out_buffer));
        float *x = tp_buffer_data(in_buffer);
        for (size_t i = 0; i < in_bytes / 4; i++) x[i] = (float)(i % 1000) * 0.001f;
        input.data = x;
        output.data = tp_buffer_data(out_buffer);
        local = output;
        local.data = malloc(out_bytes);
        memset(local.data, 0, out_bytes);
        enum { RUNS = 15 };
        double remote[RUNS], in_process[RUNS];
        for (int r = 0; r < RUNS; r++) {
            double a = now();
            CHECK(tp_client_pool(client, &desc, &input, &output));
            remote[r] = now() - a;
            a = now();
            CHECK(tp_pool(&desc, &input, &local));
            in_process[r] = now() - a;
        }
        same &= memcmp(local.data, output.data, out_bytes) == 0;
        remote_ms[c] = percentile(remote, RUNS, 0.5) * 1e3;
        local_ms[c] = percentile(in_process, RUNS, 0.5) * 1e3;
        moved[c] = (in_bytes + out_bytes) >> 20;
        CHECK(tp_buffer_free(in_buffer));
        CHECK(tp_buffer_free(out_buffer));
        free(local.data);
    }
    CHECK(tp_client_close(client));

    printf("| measure | result | target |\n|---|---|---|\n");
    printf("| tiny job round trip, p50 | %.1f us | < 100 us |\n", p50 * 1e6);
    printf("| tiny job round trip, p99 | %.1f us | |\n", p99 * 1e6);
    printf("| tiny jobs per second, 8 clients | %.0f | |\n", jobs_per_second);
    const char *names[2] = {"AvgPool3d k2 s2", "AvgPool3d k3 s1 p1"};
    for (int c = 0; c < 2; c++) {
        printf("| 64 MB job, %s (%zu MB in + out): daemon / in-process, medians of 15 | %.2f / %.2f ms = %.3fx "
               "(+%.0f us) | <= 1.15x |\n",
               names[c], moved[c], remote_ms[c], local_ms[c], remote_ms[c] / local_ms[c], (remote_ms[c] - local_ms[c]) * 1e3);
    }
    printf("results identical: %s\n", same ? "yes" : "NO");
    return same ? 0 : 1;
}
