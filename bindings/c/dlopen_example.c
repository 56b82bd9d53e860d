/* dlopen_example.c - load libtidepool.so at run time through its one entry point,
 * tp_get_api, and run MLX's documented example: AvgPool3d(kernel_size=2, stride=2) on an
 * (8, 16, 32, 32, 4) float32 tensor gives (8, 8, 16, 16, 4). Every output is checked
 * against a window average computed here. Exits non-zero on any error or mismatch.
 *
 * Usage: dlopen_example [path/to/libtidepool.so]   (default: "libtidepool.so")
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "tidepool.h"

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "libtidepool.so";
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        fprintf(stderr, "dlopen(%s): %s\n", path, dlerror());
        return 1;
    }
    tp_get_api_fn get_api;
    *(void **)&get_api = dlsym(library, "tp_get_api"); /* POSIX's blessed cast */
    if (!get_api) {
        fprintf(stderr, "dlsym(tp_get_api): %s\n", dlerror());
        return 1;
    }
    const tp_api *tp = get_api(TP_API_VERSION);
    if (!tp || tp->struct_size < sizeof(tp_api)) {
        fprintf(stderr, "libtidepool does not serve API version %d\n", TP_API_VERSION);
        return 1;
    }
    printf("libtidepool %s, API %u, %d threads\n", tp->version_string(), tp->api_version, tp->get_num_threads());

    enum { N = 8, D = 16, H = 32, W = 32, C = 4 };
    const int64_t shape[5] = {N, D, H, W, C};
    float *x = malloc(sizeof(float) * N * D * H * W * C);
    if (!x) return 1;
    for (long i = 0; i < (long)N * D * H * W * C; i++) x[i] = (float)((i * 7919) % 1000) / 100.0f - 5.0f;

    const int64_t kernel[3] = {2, 2, 2};
    tp_pool_desc desc;
    tp_tensor input, output;
    tp_status status = tp->pool_desc_init(&desc, TP_POOL_AVG, 3, kernel, NULL, NULL);
    if (status == TP_OK) status = tp->tensor_init(&input, x, TP_DTYPE_FLOAT32, 5, shape, NULL);
    if (status == TP_OK) status = tp->pool_output(&desc, &input, &output);
    if (status != TP_OK) {
        fprintf(stderr, "%s: %s\n", tp->status_string(status), tp->last_error());
        return 1;
    }
    const int64_t expected_shape[5] = {8, 8, 16, 16, 4};
    for (int a = 0; a < 5; a++) {
        if (output.shape[a] != expected_shape[a]) {
            fprintf(stderr, "output shape[%d] is %lld, expected %lld\n", a, (long long)output.shape[a],
                    (long long)expected_shape[a]);
            return 1;
        }
    }
    size_t nbytes = 0;
    tp->tensor_nbytes(&output, &nbytes);
    float *y = malloc(nbytes);
    if (!y) return 1;
    output.data = y;
    status = tp->pool(&desc, &input, &output);
    if (status != TP_OK) {
        fprintf(stderr, "tp_pool: %s: %s\n", tp->status_string(status), tp->last_error());
        return 1;
    }

    long mismatches = 0;
    const int OD = D / 2, OH = H / 2, OW = W / 2;
    for (int n = 0; n < N; n++)
        for (int od = 0; od < OD; od++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++)
                    for (int c = 0; c < C; c++) {
                        double sum = 0;
                        for (int kd = 0; kd < 2; kd++)
                            for (int kh = 0; kh < 2; kh++)
                                for (int kw = 0; kw < 2; kw++)
                                    sum += x[((((long)n * D + 2 * od + kd) * H + 2 * oh + kh) * W + 2 * ow + kw) * C + c];
                        float got = y[((((long)n * OD + od) * OH + oh) * OW + ow) * C + c];
                        if (fabs(got - sum / 8) > 1e-5 + 1e-5 * fabs(sum / 8)) {
                            if (mismatches++ < 5)
                                fprintf(stderr, "y[%d,%d,%d,%d,%d] = %g, expected %g\n", n, od, oh, ow, c, got, sum / 8);
                        }
                    }
    printf("AvgPool3d(2, 2): (8, 16, 32, 32, 4) -> (%lld, %lld, %lld, %lld, %lld), y[0] = %g, %ld mismatches\n",
           (long long)output.shape[0], (long long)output.shape[1], (long long)output.shape[2],
           (long long)output.shape[3], (long long)output.shape[4], y[0], mismatches);
    free(x);
    free(y);
    dlclose(library);
    return mismatches == 0 ? 0 : 1;
}
