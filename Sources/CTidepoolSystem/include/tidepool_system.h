/* Small C shims for what Swift cannot express or cannot do safely: the pidfd_open system
 * call, eventfds, a SIGBUS guard for memory mapped from other processes, words in shared
 * memory that one process sets and another waits on, and a spin loop's pause. */
#ifndef TIDEPOOL_SYSTEM_H
#define TIDEPOOL_SYSTEM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* pidfd_open(2): a descriptor that becomes readable when process `pid` exits; -1 and errno
 * on failure (e.g. ESRCH when there is no such process). */
int tpsys_pidfd_open(pid_t pid);

/* A non-blocking eventfd(2) for waking a poll loop from other threads; -1 and errno on
 * failure. tpsys_eventfd_signal adds 1; tpsys_eventfd_drain resets it to 0. */
int tpsys_eventfd(void);
void tpsys_eventfd_signal(int fd);
void tpsys_eventfd_drain(int fd);

/* The SIGBUS guard. A shared-memory object mapped from a client can be truncated by that
 * client at any time; touching the lost pages raises SIGBUS, which would kill the daemon.
 * Guarded ranges are instead replaced by private zero pages on the fault (as Wayland's
 * wl_shm does), the access completes, and the range is marked poisoned so the job touching
 * it can be failed afterwards. Faults outside guarded ranges keep their default action.
 *
 * tpsys_guard_install: install the handler once per process (idempotent); 0 or -1/errno.
 * tpsys_guard_add: guard [start, start + length); returns a slot or -1 when all are taken.
 * tpsys_guard_poisoned: 1 once a fault hit the slot's range, else 0.
 * tpsys_guard_remove: stop guarding (call before unmapping the range). */
int tpsys_guard_install(void);
int tpsys_guard_add(void *start, size_t length);
int tpsys_guard_poisoned(int slot);
void tpsys_guard_remove(int slot);

/* A done word (docs/protocol.md): a 4-byte word in shared memory, 0 until another process
 * sets it once, through a futex shared between processes (not FUTEX_PRIVATE).
 * tpsys_word_set: store `value` (release ordering) and wake every waiter.
 * tpsys_word_wait: wait while the word is 0, at most timeout_ms (< 0: no limit); returns the
 * word (acquire ordering), 0 if the time ran out. */
void tpsys_word_set(uint32_t *word, uint32_t value);
uint32_t tpsys_word_wait(uint32_t *word, int timeout_ms);

/* Tells the service manager `state` ("READY=1", "STOPPING=1", ...) as sd_notify(3) does, when
 * $NOTIFY_SOCKET names one: 1 when sent, 0 when there is none, -1/errno on failure. */
int tpsys_notify(const char *state);

/* Names the calling thread (at most 15 bytes are kept) for ps, top -H and debuggers. */
void tpsys_name_thread(const char *name);

/* One turn of a spin-wait loop (the worker pool's): the pause instruction, which tells the
 * CPU, and a hypervisor, that this thread only waits. */
static inline void tpsys_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
