#define _GNU_SOURCE
#include "tidepool_zmq.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* Every function used, as (return type, name without zmq_, parameters, arguments, failure). */
#define TPZMQ_FUNCTIONS(X)                                                                          \
    X(void *, ctx_new, (void), (), NULL)                                                            \
    X(int, ctx_term, (void *context), (context), -1)                                                \
    X(void *, socket, (void *context, int type), (context, type), NULL)                             \
    X(int, close, (void *socket), (socket), -1)                                                     \
    X(int, bind, (void *socket, const char *endpoint), (socket, endpoint), -1)                      \
    X(int, connect, (void *socket, const char *endpoint), (socket, endpoint), -1)                   \
    X(int, setsockopt, (void *socket, int option, const void *value, size_t size),                  \
      (socket, option, value, size), -1)                                                            \
    X(int, getsockopt, (void *socket, int option, void *value, size_t *size),                       \
      (socket, option, value, size), -1)                                                            \
    X(int, socket_monitor, (void *socket, const char *endpoint, int events),                        \
      (socket, endpoint, events), -1)                                                               \
    X(int, msg_init, (zmq_msg_t *message), (message), -1)                                           \
    X(int, msg_init_size, (zmq_msg_t *message, size_t size), (message, size), -1)                   \
    X(int, msg_init_data, (zmq_msg_t *message, void *data, size_t size, zmq_free_fn *release,       \
                           void *hint), (message, data, size, release, hint), -1)                   \
    X(int, msg_close, (zmq_msg_t *message), (message), -1)                                          \
    X(void *, msg_data, (zmq_msg_t *message), (message), NULL)                                      \
    X(size_t, msg_size, (const zmq_msg_t *message), (message), 0)                                   \
    X(int, msg_more, (const zmq_msg_t *message), (message), 0)                                      \
    X(const char *, msg_gets, (const zmq_msg_t *message, const char *property),                     \
      (message, property), NULL)                                                                    \
    X(int, msg_send, (zmq_msg_t *message, void *socket, int flags), (message, socket, flags), -1)   \
    X(int, msg_recv, (zmq_msg_t *message, void *socket, int flags), (message, socket, flags), -1)   \
    X(int, poll, (zmq_pollitem_t *items, int count, long timeout), (items, count, timeout), -1)      \
    X(int, has, (const char *capability), (capability), 0)                                          \
    X(int, curve_keypair, (char *z85_public_key, char *z85_secret_key),                             \
      (z85_public_key, z85_secret_key), -1)                                                         \
    X(int, curve_public, (char *z85_public_key, const char *z85_secret_key),                        \
      (z85_public_key, z85_secret_key), -1)                                                         \
    X(char *, z85_encode, (char *dest, const uint8_t *data, size_t size), (dest, data, size), NULL) \
    X(uint8_t *, z85_decode, (uint8_t *dest, const char *string), (dest, string), NULL)

#define TPZMQ_POINTER(ret, name, params, args, failure) static ret(*real_##name) params;
TPZMQ_FUNCTIONS(TPZMQ_POINTER)
static int (*real_errno)(void);
static const char *(*real_strerror)(int);
static void (*real_version)(int *, int *, int *);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int loaded;
static char load_error[512];

/* dlsym returns a data pointer; the function pointer is copied out of it bit for bit. */
static int resolve(void *handle, const char *name, void *destination, size_t size) {
    void *symbol = dlsym(handle, name);
    if (symbol == NULL) {
        snprintf(load_error, sizeof load_error, "libzmq (%s) lacks %s: a libzmq of 4.3 or later is needed",
                 TPZMQ_LIBRARY, name);
        return -1;
    }
    memcpy(destination, &symbol, size);
    return 0;
}

static void load(void) {
    void *handle = dlopen(TPZMQ_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        const char *reason = dlerror();
        snprintf(load_error, sizeof load_error,
                 "libzmq cannot be loaded (%s); the client needs ZeroMQ's library (Debian: apt install libzmq5)",
                 reason ? reason : TPZMQ_LIBRARY);
        return;
    }
#define TPZMQ_RESOLVE(ret, name, params, args, failure)                                            \
    if (resolve(handle, "zmq_" #name, &real_##name, sizeof real_##name) != 0) return;
    TPZMQ_FUNCTIONS(TPZMQ_RESOLVE)
    if (resolve(handle, "zmq_errno", &real_errno, sizeof real_errno) != 0
        || resolve(handle, "zmq_strerror", &real_strerror, sizeof real_strerror) != 0
        || resolve(handle, "zmq_version", &real_version, sizeof real_version) != 0)
        return;
    /* The handle stays open for the life of the process: sockets and threads of libzmq use it. */
    loaded = 1;
}

int tpzmq_load(void) {
    pthread_once(&once, load);
    return loaded ? 0 : -1;
}

const char *tpzmq_load_error(void) {
    return tpzmq_load() == 0 ? "" : load_error;
}

#define TPZMQ_DEFINE(ret, name, params, args, failure)                                             \
    ret tpzmq_##name params {                                                                       \
        if (tpzmq_load() != 0) {                                                                    \
            errno = ELIBACC;                                                                        \
            return failure;                                                                         \
        }                                                                                           \
        return real_##name args;                                                                    \
    }
TPZMQ_FUNCTIONS(TPZMQ_DEFINE)

int tpzmq_errno(void) {
    return tpzmq_load() == 0 ? real_errno() : errno;
}

const char *tpzmq_strerror(int code) {
    if (tpzmq_load() != 0) return code == ELIBACC ? load_error : strerror(code);
    return real_strerror(code);
}

void tpzmq_version(int *major, int *minor, int *patch) {
    if (tpzmq_load() != 0) {
        *major = *minor = *patch = 0;
        return;
    }
    real_version(major, minor, patch);
}
