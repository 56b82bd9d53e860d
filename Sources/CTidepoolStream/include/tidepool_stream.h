/* Memory-traffic hints the engine cannot express in Swift. Non-temporal copies for large
 * outputs: written once and not read back soon, they go to memory without first reading each
 * line into the cache (no read-for-ownership). Prefetches: input wanted soon, fetched while
 * the engine computes on scratch. */
#ifndef TIDEPOOL_STREAM_H
#define TIDEPOOL_STREAM_H

#include <stddef.h>

/* Copy `bytes` from `source` to `destination` with streaming stores where aligned. */
void tpstream_copy(void *destination, const void *source, size_t bytes);

/* Order earlier streaming stores before later stores (call once the output is complete). */
void tpstream_fence(void);

/* Hint that [address, address + bytes) will be read soon: fetched into L2 meanwhile. */
void tpstream_prefetch(const void *address, size_t bytes);

#endif
