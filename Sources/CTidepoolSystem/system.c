#define _GNU_SOURCE
#include "tidepool_system.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

int tpsys_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int tpsys_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

void tpsys_eventfd_signal(int fd) {
    uint64_t one = 1;
    /* Can only fail when the counter would overflow, and then the fd is readable anyway. */
    ssize_t written = write(fd, &one, sizeof one);
    (void)written;
}

void tpsys_eventfd_drain(int fd) {
    uint64_t count;
    ssize_t got = read(fd, &count, sizeof count);
    (void)got;
}

/* Lock-free slots, read by the signal handler: a range is live while `end` is non-zero. */
#define GUARD_SLOTS 4096
static struct {
    _Atomic uintptr_t start;
    _Atomic uintptr_t end;
    _Atomic int poisoned;
} slots[GUARD_SLOTS];
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER; /* serialises add/remove */
static struct sigaction previous_action;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static int install_result = 0;

static void on_sigbus(int signal, siginfo_t *info, void *context) {
    uintptr_t address = (uintptr_t)info->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t end = atomic_load(&slots[i].end);
        uintptr_t start = atomic_load(&slots[i].start);
        if (end != 0 && address >= start && address < end) {
            /* Replace the whole range so later accesses do not fault again. */
            void *mapped = mmap((void *)start, end - start, PROT_READ | PROT_WRITE,
                                MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (mapped != MAP_FAILED) {
                atomic_store(&slots[i].poisoned, 1);
                return;
            }
            break;
        }
    }
    /* Not ours: behave as if no handler had been installed. */
    if (previous_action.sa_flags & SA_SIGINFO && previous_action.sa_sigaction) {
        previous_action.sa_sigaction(signal, info, context);
    } else if (previous_action.sa_handler != SIG_DFL && previous_action.sa_handler != SIG_IGN &&
               previous_action.sa_handler != NULL) {
        previous_action.sa_handler(signal);
    } else {
        struct sigaction fallback;
        memset(&fallback, 0, sizeof fallback);
        fallback.sa_handler = SIG_DFL;
        sigaction(SIGBUS, &fallback, NULL);
        raise(SIGBUS);
    }
}

static void install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous_action) != 0) install_result = -1;
}

int tpsys_guard_install(void) {
    pthread_once(&install_once, install);
    return install_result;
}

int tpsys_guard_add(void *start, size_t length) {
    pthread_mutex_lock(&slots_lock);
    int found = -1;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        if (atomic_load(&slots[i].end) == 0) {
            atomic_store(&slots[i].poisoned, 0);
            atomic_store(&slots[i].start, (uintptr_t)start);
            atomic_store(&slots[i].end, (uintptr_t)start + length);
            found = i;
            break;
        }
    }
    pthread_mutex_unlock(&slots_lock);
    return found;
}

int tpsys_guard_poisoned(int slot) {
    if (slot < 0 || slot >= GUARD_SLOTS) return 0;
    return atomic_load(&slots[slot].poisoned);
}

void tpsys_guard_remove(int slot) {
    if (slot < 0 || slot >= GUARD_SLOTS) return;
    pthread_mutex_lock(&slots_lock);
    atomic_store(&slots[slot].end, 0);
    atomic_store(&slots[slot].start, 0);
    pthread_mutex_unlock(&slots_lock);
}

void tpsys_word_set(uint32_t *word, uint32_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

uint32_t tpsys_word_wait(uint32_t *word, int timeout_ms) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    for (;;) {
        uint32_t value = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        if (value != 0) return value;
        struct timespec left = {0, 0};
        if (timeout_ms >= 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            left.tv_sec = deadline.tv_sec - now.tv_sec;
            left.tv_nsec = deadline.tv_nsec - now.tv_nsec;
            if (left.tv_nsec < 0) {
                left.tv_sec -= 1;
                left.tv_nsec += 1000000000L;
            }
            if (left.tv_sec < 0) return 0;
        }
        /* Returns at once if the word is no longer 0 (EAGAIN), on a wake, a signal or the time. */
        syscall(SYS_futex, word, FUTEX_WAIT, 0, timeout_ms >= 0 ? &left : NULL, NULL, 0);
    }
}

/* sd_notify(3)'s protocol without libsystemd: one datagram to the AF_UNIX socket named by
 * $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'). */
int tpsys_notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0') return 0;
    if (path[0] != '/' && path[0] != '@') return -1;
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    size_t length = strlen(path);
    if (length >= sizeof address.sun_path) return -1;
    memcpy(address.sun_path, path, length);
    if (path[0] == '@') address.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    socklen_t size = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + length);
    ssize_t sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&address, size);
    int saved = errno;
    close(fd);
    errno = saved;
    return sent < 0 ? -1 : 1;
}

void tpsys_name_thread(const char *name) { pthread_setname_np(pthread_self(), name); }
