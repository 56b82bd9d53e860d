/* remote_example.c - send pooling jobs to a running tidepoold.
 *
 * The input and output live in shared-memory buffers from tp_client_alloc(), so the job
 * moves no tensor bytes through the socket. The result is compared with the same pooling
 * run in-process. Then four jobs are submitted at once and waited for, and one job goes
 * with its tensors inline (ordinary malloc'd memory). Last, the gradient of a max pooling
 * with tied maxima (tp_client_pool_backward, both tie rules; the cotangent in shared memory),
 * compared with tp_pool_backward in-process. Exits non-zero on any mismatch.
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

    /* The gradient of MaxPool2d(3, stride 1, padding 1) on (1, 6, 6, 2) with values in
     * {0, 1, 2}, so windows tie: the daemon against in-process, split and first. */
    {
        const int64_t gshape[4] = {1, 6, 6, 2}, k3[2] = {3, 3}, s1[2] = {1, 1}, p1[2] = {1, 1};
        tp_pool_desc max_desc;
        tp_tensor gx, gy, grad_remote, grad_local;
        TRY(tp_pool_desc_init(&max_desc, TP_POOL_MAX, 2, k3, s1, p1));
        tp_buffer *shared = NULL;
        size_t n = 6 * 6 * 2, bytes = n * sizeof(float);
        TRY(tp_client_alloc(client, 2 * bytes, &shared));
        float *values = tp_buffer_data(shared), *cotangent = values + n;
        float grad_a[72], grad_b[72];
        for (size_t i = 0; i < n; i++) {
            values[i] = (float)((i * 7) % 3);
            cotangent[i] = (float)(i % 5) - 2.0f;
        }
        TRY(tp_tensor_init(&gx, values, TP_DTYPE_FLOAT32, 4, gshape, NULL));
        TRY(tp_tensor_init(&gy, cotangent, TP_DTYPE_FLOAT32, 4, gshape, NULL)); /* the output's shape */
        TRY(tp_tensor_init(&grad_remote, grad_a, TP_DTYPE_FLOAT32, 4, gshape, NULL));
        TRY(tp_tensor_init(&grad_local, grad_b, TP_DTYPE_FLOAT32, 4, gshape, NULL));
        for (int32_t ties = TP_TIES_SPLIT; ties <= TP_TIES_FIRST; ties++) {
            tp_backward_options options = {sizeof options, 0, ties, 0};
            uint64_t job = 0;
            TRY(tp_client_submit_backward(client, &max_desc, &gx, &gy, &grad_remote, &options, &job));
            TRY(tp_client_wait(client, job, -1));
            TRY(tp_pool_backward(&max_desc, &gx, &gy, &grad_local, &options));
            int differs = memcmp(grad_a, grad_b, bytes) != 0;
            memset(grad_a, 0, bytes);
            TRY(tp_client_pool_backward(client, &max_desc, &gx, &gy, &grad_remote, &options));
            differs |= memcmp(grad_a, grad_b, bytes) != 0;
            mismatch |= differs;
            printf("backward job (ties %s): %s\n", ties == TP_TIES_SPLIT ? "split" : "first",
                   differs ? "MISMATCH" : "equals in-process");
        }
        TRY(tp_buffer_free(shared));
    }

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
