/* libzmq's C API, loaded on first use.
 *
 * libtidepool.so pools in-process without ZeroMQ: only the client needs it. So libzmq is not a
 * link-time dependency; the first call of any function here dlopen()s libzmq.so.5 (Debian's
 * libzmq5) and resolves the functions Tidepool uses. Each tpzmq_x behaves as zmq_x; when libzmq
 * cannot be loaded, they fail as libzmq fails (NULL or -1) with errno ELIBACC, and
 * tpzmq_strerror(ELIBACC) says why. zmq.h supplies the types and constants only. */
#ifndef TIDEPOOL_ZMQ_H
#define TIDEPOOL_ZMQ_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

/* The library's name, as dlopen() is given it. */
#define TPZMQ_LIBRARY "libzmq.so.5"

/* 0 when libzmq is loaded (now or before), -1 when it cannot be: then tpzmq_load_error() says
 * why, naming libzmq. Thread-safe; tried once per process. */
int tpzmq_load(void);
const char *tpzmq_load_error(void);

void *tpzmq_ctx_new(void);
int tpzmq_ctx_term(void *context);
void *tpzmq_socket(void *context, int type);
int tpzmq_close(void *socket);
int tpzmq_bind(void *socket, const char *endpoint);
int tpzmq_connect(void *socket, const char *endpoint);
int tpzmq_setsockopt(void *socket, int option, const void *value, size_t size);
int tpzmq_getsockopt(void *socket, int option, void *value, size_t *size);
int tpzmq_socket_monitor(void *socket, const char *endpoint, int events);
int tpzmq_msg_init(zmq_msg_t *message);
int tpzmq_msg_init_size(zmq_msg_t *message, size_t size);
int tpzmq_msg_init_data(zmq_msg_t *message, void *data, size_t size, zmq_free_fn *release, void *hint);
int tpzmq_msg_close(zmq_msg_t *message);
void *tpzmq_msg_data(zmq_msg_t *message);
size_t tpzmq_msg_size(const zmq_msg_t *message);
int tpzmq_msg_more(const zmq_msg_t *message);
const char *tpzmq_msg_gets(const zmq_msg_t *message, const char *property);
int tpzmq_msg_send(zmq_msg_t *message, void *socket, int flags);
int tpzmq_msg_recv(zmq_msg_t *message, void *socket, int flags);
int tpzmq_poll(zmq_pollitem_t *items, int count, long timeout);
/* CurveZMQ: 1 when libzmq was built with it ("curve"), 0 otherwise or when not loaded. */
int tpzmq_has(const char *capability);
int tpzmq_curve_keypair(char *z85_public_key, char *z85_secret_key);
int tpzmq_curve_public(char *z85_public_key, const char *z85_secret_key);
char *tpzmq_z85_encode(char *dest, const uint8_t *data, size_t size);
uint8_t *tpzmq_z85_decode(uint8_t *dest, const char *string);
int tpzmq_errno(void);
const char *tpzmq_strerror(int code);
/* 0.0.0 when libzmq cannot be loaded. */
void tpzmq_version(int *major, int *minor, int *patch);

#endif
