/* Timing helpers shared by the benchmarks. */
#ifndef TIDEPOOL_BENCH_UTIL_H
#define TIDEPOOL_BENCH_UTIL_H

#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The p-quantile (0 .. 1) of `values`, which it sorts. */
static double percentile(double *values, int count, double p) {
    qsort(values, (size_t)count, sizeof(double), compare_doubles);
    return values[(int)(p * (count - 1) + 0.5)];
}

#endif
