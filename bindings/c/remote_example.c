/* remote_example.c - send pooling jobs to a running tidepoold.
 *
 * The input and output live in shared-memory buffers from tp_client_alloc(), so the job
 * moves no tensor bytes through the socket. The result is compared with the same pooling
 * run in-process. Then four jobs are submitted at once and waited for, and one job goes
 * with its tensors inline (ordinary malloc'd memory). Exits non-zero on any mismatch.
 *
 * Usage: remote_example [endpoint]   (default: tp_default_endpoint())
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tidepool.h"

#define TRY(call)                                                                   \
    do {                                                                            \
        tp_status status_ = (call);                                                 \
        if (status_ != TP_OK) {                                                     \
            fprintf(stderr, "%s: %s: %s\n", #call, tp_status_string(status_), tp_last_error()); \
            return 1;                                                               \
        }                                                                           \
    } while (0)

int main(int argc, char **argv) {
    const char *endpoint = argc > 1 ? argv[1] : tp_default_endpoint();
    tp_client *client = NULL;
    TRY(tp_client_connect(endpoint, 5000, &client));
    double seconds = 0;
    TRY(tp_client_ping(client, &seconds));
    printf("connected to %s, ping %.1f us\n", endpoint, seconds * 1e6);

    const int64_t shape[5] = {8, 16, 32, 32, 4}, kernel[3] = {2, 2, 2};
    tp_pool_desc desc;
    tp_tensor input, output, local_output;
    TRY(tp_pool_desc_init(&desc, TP_POOL_AVG, 3, kernel, NULL, NULL));
    TRY(tp_tensor_init(&input, NULL, TP_DTYPE_FLOAT32, 5, shape, NULL));
    TRY(tp_pool_output(&desc, &input, &output));
    size_t in_bytes = 0, out_bytes = 0;
    TRY(tp_tensor_nbytes(&input, &in_bytes));
    TRY(tp_tensor_nbytes(&output, &out_bytes));

    /* Zero-copy: fill the shared input in place, let the daemon write the shared output. */
    tp_buffer *in_buffer = NULL, *out_buffer = NULL;
    TRY(tp_client_alloc(client, in_bytes, &in_buffer));
    TRY(tp_client_alloc(client, out_bytes, &out_buffer));
    float *x = tp_buffer_data(in_buffer);
    for (size_t i = 0; i < in_bytes / sizeof(float); i++) x[i] = (float)((i * 7919) % 1000) / 100.0f - 5.0f;
    input.data = x;
    output.data = tp_buffer_data(out_buffer);
    TRY(tp_client_pool(client, &desc, &input, &output));

    float *expected = malloc(out_bytes);
    if (!expected) return 1;
    local_output = output;
    local_output.data = expected;
    TRY(tp_pool(&desc, &input, &local_output));
    int mismatch = memcmp(expected, output.data, out_bytes) != 0;
    printf("shared-memory job: %s\n", mismatch ? "MISMATCH" : "equals in-process");

    /* Several jobs in flight at once, each into its own output, waited in reverse order. */
    enum { JOBS = 4 };
    tp_buffer *outputs[JOBS];
    uint64_t jobs[JOBS];
    tp_tensor job_outputs[JOBS];
    for (int j = 0; j < JOBS; j++) {
        TRY(tp_client_alloc(client, out_bytes, &outputs[j]));
        job_outputs[j] = output;
        job_outputs[j].data = tp_buffer_data(outputs[j]);
        TRY(tp_client_submit(client, &desc, &input, &job_outputs[j], &jobs[j]));
    }
    for (int j = JOBS - 1; j >= 0; j--) {
        TRY(tp_client_wait(client, jobs[j], 5000));
        mismatch |= memcmp(expected, job_outputs[j].data, out_bytes) != 0;
        TRY(tp_buffer_free(outputs[j]));
    }
    printf("%d jobs in flight: %s\n", JOBS, mismatch ? "MISMATCH" : "all equal in-process");

    /* Inline: ordinary memory, copied into the request and back out of the reply. */
    float *plain_in = malloc(in_bytes), *plain_out = malloc(out_bytes);
    if (!plain_in || !plain_out) return 1;
    memcpy(plain_in, x, in_bytes);
    input.data = plain_in;
    output.data = plain_out;
    TRY(tp_client_pool(client, &desc, &input, &output));
    mismatch |= memcmp(expected, plain_out, out_bytes) != 0;
    printf("inline job: %s\n", memcmp(expected, plain_out, out_bytes) ? "MISMATCH" : "equals in-process");

    char stats[1024];
    TRY(tp_client_stats(client, stats, sizeof stats, NULL));
    printf("daemon stats: %s\n", stats);

    TRY(tp_buffer_free(in_buffer));
    TRY(tp_client_close(client));
    TRY(tp_buffer_free(out_buffer)); /* buffers may outlive their client */
    free(expected);
    free(plain_in);
    free(plain_out);
    return mismatch;
}
