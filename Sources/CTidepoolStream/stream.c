#include "tidepool_stream.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <emmintrin.h>

void tpstream_copy(void *destination, const void *source, size_t bytes) {
    unsigned char *d = destination;
    const unsigned char *s = source;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;
    if (head > bytes) head = bytes;
    memcpy(d, s, head);
    d += head;
    s += head;
    bytes -= head;
    for (; bytes >= 64; bytes -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32)), e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, s, bytes);
}

void tpstream_fence(void) { _mm_sfence(); }

void tpstream_prefetch(const void *address, size_t bytes) {
    const char *p = (const char *)((uintptr_t)address & ~(uintptr_t)63), *end = (const char *)address + bytes;
    for (; p < end; p += 64) _mm_prefetch(p, _MM_HINT_T1);
}
#else
void tpstream_copy(void *destination, const void *source, size_t bytes) { memcpy(destination, source, bytes); }
void tpstream_fence(void) {}
void tpstream_prefetch(const void *address, size_t bytes) {
    (void)address;
    (void)bytes;
}
#endif
