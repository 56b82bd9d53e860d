/* libzmq's C API (Debian: libzmq3-dev), imported into Swift as CZeroMQ. */
#include <zmq.h>
