"""Tidepool's wire protocol written only from docs/protocol.md, with pyzmq and struct: the
encoders and the raw DEALER client shared by the protocol tests and the hostile client."""

import mmap
import os
import struct
import uuid

import _posixshmem
import numpy as np
import zmq

MAGIC, VERSION = 0x4C4F5054, 2
PING, POOL, REGISTER, UNREGISTER, STATS, BYE, BACKWARD = 1, 2, 3, 4, 5, 6, 7
DONE_WORD, RESUBMITTED = 1, 2
DTYPES = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.float16): 3, np.dtype(np.int8): 5,
          np.dtype(np.int16): 6, np.dtype(np.int32): 7, np.dtype(np.int64): 8, np.dtype(np.uint8): 9,
          np.dtype(np.uint16): 10, np.dtype(np.uint32): 11, np.dtype(np.uint64): 12}
STATUS = dict(OK=0, INVALID_ARGUMENT=1, NULL_POINTER=2, DTYPE=3, SHAPE=4, OVERFLOW=5, FLAGS=6, VERSION=7, LAYOUT=8,
              NO_MEMORY=9, INTERNAL=10, PROTOCOL=11, TOO_LARGE=12, BUSY=13, TIMEOUT=14, CONNECTION=15, NOT_FOUND=16,
              CLOSED=17, SYSTEM=18, PERMISSION=19)
PING_REPLY_SIZE = 40


def header(kind, job_id, flags=0, magic=MAGIC, version=VERSION):
    return struct.pack("<IHHQiI", magic, version, kind, job_id, 0, flags)


def output_shape(shape, kernel, stride, padding):
    d = len(shape) - 2
    return (shape[0], *[(shape[1 + a] + 2 * padding - kernel) // stride + 1 for a in range(d)], shape[-1])


def pool_body(shape, dtype_code, kind, kernel, stride, padding, in_loc=0, out_loc=0, in_region=0, in_offset=0,
              in_bytes=None, out_region=0, out_offset=0, out_bytes=None, itemsize=4, out_itemsize=4, rank=None,
              spatial=None):
    """POOL's 208-byte body; `spatial` and `rank` only override the fields, to test their checks."""
    d = len(shape) - 2
    out = output_shape(shape, kernel, stride, padding)
    in_bytes = int(np.prod(shape)) * itemsize if in_bytes is None else in_bytes
    # A negative output length (an invalid request, kept for its check) packs as 0 bytes.
    out_bytes = max(int(np.prod(out)), 0) * out_itemsize if out_bytes is None else out_bytes
    pad3 = lambda v: [v] * d + [0] * (3 - d)
    return struct.pack("<iiii8q3q3q3qII6Q", kind, dtype_code, d if spatial is None else spatial,
                       len(shape) if rank is None else rank,
                       *shape, *[0] * (8 - len(shape)), *pad3(kernel), *pad3(stride), *pad3(padding),
                       in_loc, out_loc, in_region, in_offset, in_bytes, out_region, out_offset, out_bytes)


def pool_request(job_id, x, kind=1, kernel=2, stride=2, padding=0, flags=0, done=None, **fields):
    """A POOL of array `x`: inline unless `in_loc=1`; `done` = (region, offset) adds a done word."""
    out_itemsize = 4 if kind == 1 and x.dtype.kind in "iu" else x.itemsize
    frame0 = header(POOL, job_id, flags | (DONE_WORD if done else 0)) + pool_body(
        x.shape, DTYPES[x.dtype], kind, kernel, stride, padding, itemsize=x.itemsize, out_itemsize=out_itemsize, **fields)
    if done:
        frame0 += struct.pack("<QQ", *done)
    return [frame0, x.tobytes()] if fields.get("in_loc", 0) == 0 else [frame0]


def backward_request(job_id, x, g, kind=1, kernel=2, stride=2, padding=0, ties=0, flags=0, done=None, g_loc=0,
                     g_region=0, g_offset=0, g_bytes=None, **fields):
    """A BACKWARD of array `x` for cotangent `g`: each inline unless its location is 1 (`in_loc`,
    `g_loc`); the gradient inline unless `out_loc=1`. Inline tensors follow frame 0: x, then g."""
    fields.setdefault("out_bytes", x.nbytes)
    frame0 = header(BACKWARD, job_id, flags | (DONE_WORD if done else 0)) + pool_body(
        x.shape, DTYPES[x.dtype], kind, kernel, stride, padding, itemsize=x.itemsize, **fields)
    frame0 += struct.pack("<iI3Q", ties, g_loc, g_region, g_offset, g.nbytes if g_bytes is None else g_bytes)
    if done:
        frame0 += struct.pack("<QQ", *done)
    payload = ([x.tobytes()] if fields.get("in_loc", 0) == 0 else []) + ([g.tobytes()] if g_loc == 0 else [])
    return [frame0] + payload


def register_request(job_id, size, name, pid=None):
    return [header(REGISTER, job_id) + struct.pack("<QII", size, os.getpid() if pid is None else pid, 0), name.encode()]


def parse_reply(frames):
    magic, version, kind, job_id, status, flags = struct.unpack("<IHHQiI", frames[0][:24])
    assert (magic, version) == (MAGIC, VERSION)
    return kind, job_id, status, frames


class SharedObject:
    """A POSIX shared-memory object, mapped; its name is the caller's to unlink (unlike
    multiprocessing.shared_memory, no resource tracker process is involved)."""

    def __init__(self, name, size, mode):
        self._name = "/" + name
        self.name = name
        self.size = size
        self._fd = _posixshmem.shm_open(self._name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        os.fchmod(self._fd, mode)
        os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        self.buf = memoryview(self._map)

    def unlink(self):
        try:
            _posixshmem.shm_unlink(self._name)
        except FileNotFoundError:
            pass

    def close(self):
        self.buf.release()
        try:
            self._map.close()
        except BufferError:  # a numpy view still holds it: the mapping goes with the process
            pass
        os.close(self._fd)


def make_object(size, mode=0o600, name=None):
    """A shared-memory object as a client makes it (/tidepool-<pid>-..., 0600)."""
    return SharedObject(name or f"tidepool-{os.getpid()}-raw-{uuid.uuid4().hex}", size, mode)


class RawClient:
    def __init__(self, endpoint, context=None, curve=None):
        """`curve`: (server public key, client public key, client secret key), Z85 bytes, for a
        CURVE tcp endpoint (docs/protocol.md, "CurveZMQ")."""
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            self.socket.curve_serverkey, self.socket.curve_publickey, self.socket.curve_secretkey = curve
        self.socket.connect(endpoint)

    def call(self, frames, timeout_ms=10000):
        self.socket.send_multipart(frames)
        assert self.socket.poll(timeout_ms), "no reply"
        return parse_reply(self.socket.recv_multipart())

    def ping(self):
        """(library version, daemon pid as told to this peer, instance), or None."""
        kind, _, status, frames = self.call([header(PING, 7)])
        if kind != PING | 0x8000 or status != 0 or len(frames[0]) != PING_REPLY_SIZE:
            return None
        return struct.unpack("<IIQ", frames[0][24:40])

    def ping_ok(self):
        return self.ping() is not None

    def register(self, size, mode=0o600, name=None):
        """A shared-memory object per docs/protocol.md, registered; returns (region id, shm, status, frames)."""
        memory = make_object(size, mode, name)
        kind, _, status, frames = self.call(register_request(99, size, memory._name))
        region = struct.unpack("<Q", frames[0][24:32])[0] if status == 0 else None
        return region, memory, status, frames

    def close(self):
        self.socket.close(0)
