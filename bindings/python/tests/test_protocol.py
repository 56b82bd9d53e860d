"""A raw client written only from docs/protocol.md (pyzmq, struct, numpy): jobs both ways,
and every validation rule answered with its error while the daemon keeps serving."""

import os
import struct
import threading
import numpy as np
import pytest

import tidepool
from conftest import Daemon
from rawproto import (BACKWARD, BYE, DTYPES, MAGIC, PING, POOL, REGISTER, STATS, STATUS, UNREGISTER, RawClient,
                      backward_request, header, make_object, parse_reply, pool_body, pool_request)


@pytest.fixture(scope="module")
def shared_daemon():
    running = Daemon("--max-job-bytes", str(1 << 20))
    yield running
    assert running.stop() == 0, running.logs()


@pytest.fixture
def raw(shared_daemon):
    client = RawClient(shared_daemon.endpoint)
    yield client
    assert client.ping_ok(), "the daemon stopped serving"
    client.close()


def test_documented_example_runs_inline(raw):
    # The example of docs/protocol.md, verbatim in substance.
    x = np.random.randn(2, 8, 8, 3).astype(np.float32)
    frame0 = struct.pack("<IHHQiI", 0x4C4F5054, 2, 2, 42, 0, 0) + struct.pack(
        "<iiii8q3q3q3qII6Q", 1, 1, 2, 4, *x.shape, 0, 0, 0, 0,
        2, 2, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, x.nbytes, 0, 0, 2 * 4 * 4 * 3 * 4)
    kind, job_id, status, frames = raw.call([frame0, x.tobytes()])
    assert (kind, job_id, status) == (POOL | 0x8000, 42, 0)
    dtype, rank, *shape = struct.unpack("<ii8q", frames[0][24:96])
    assert (dtype, rank, tuple(shape[:rank])) == (1, 4, (2, 4, 4, 3))
    y = np.frombuffer(frames[1], np.float32).reshape(2, 4, 4, 3)
    np.testing.assert_array_equal(y, tidepool.avg_pool2d(x, 2))


def test_job_through_shared_memory(raw):
    x = np.random.randn(2, 8, 8, 3).astype(np.float32)
    out_bytes = 2 * 4 * 4 * 3 * 4
    region, memory, status, _ = raw.register(x.nbytes + out_bytes)
    assert status == 0
    # The name is the client's until it frees the buffer (a restarted daemon can map it again).
    assert os.path.exists(f"/dev/shm/{memory.name}")
    np.frombuffer(memory.buf, np.float32, x.size)[:] = x.ravel()
    kind, _, status, frames = raw.call(pool_request(5, x, kind=2, in_loc=1, out_loc=1, in_region=region,
                                                    out_region=region, out_offset=x.nbytes))
    assert status == 0 and len(frames) == 1
    y = np.frombuffer(memory.buf, np.float32, out_bytes // 4, offset=x.nbytes).reshape(2, 4, 4, 3)
    np.testing.assert_array_equal(y, tidepool.max_pool2d(x, 2))
    assert raw.call([header(UNREGISTER, 6) + struct.pack("<Q", region)])[2] == 0
    del y
    memory.unlink()
    memory.close()


def test_documented_backward_example(raw):
    # docs/protocol.md's BACKWARD example: AvgPool2d(2) of an (2, 8, 8, 3) input, cotangent ones.
    x = np.random.randn(2, 8, 8, 3).astype(np.float32)
    g = np.ones((2, 4, 4, 3), np.float32)
    frame0 = struct.pack("<IHHQiI", 0x4C4F5054, 2, 7, 43, 0, 0) + struct.pack(
        "<iiii8q3q3q3qII6Q", 1, 1, 2, 4, *x.shape, 0, 0, 0, 0,
        2, 2, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, x.nbytes, 0, 0, x.nbytes) + struct.pack("<iI3Q", 0, 0, 0, 0, g.nbytes)
    assert len(frame0) == 264
    kind, job_id, status, frames = raw.call([frame0, x.tobytes(), g.tobytes()])
    assert (kind, job_id, status) == (BACKWARD | 0x8000, 43, 0), frames
    dtype, rank, *shape = struct.unpack("<ii8q", frames[0][24:96])
    assert (dtype, rank, tuple(shape[:rank])) == (1, 4, x.shape)
    gradient = np.frombuffer(frames[1], np.float32).reshape(x.shape)
    np.testing.assert_array_equal(gradient, np.full(x.shape, 0.25, np.float32))


@pytest.mark.parametrize("x_loc, g_loc, out_loc", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 1), (0, 0, 1)])
def test_backward_jobs_inline_and_in_regions(raw, x_loc, g_loc, out_loc):
    # Max with overlapping windows and ties (integers in floats), so routing matters.
    rng = np.random.default_rng(x_loc * 4 + g_loc * 2 + out_loc)
    x = rng.integers(0, 4, (2, 9, 7, 3)).astype(np.float32)
    g = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)  # MaxPool2d(3, 2, 1) of x
    for ties in (0, 1):
        expected = tidepool.max_pool2d_vjp(x, g, 3, 2, 1, ties=("split", "first")[ties])
        region, memory, status, _ = raw.register(x.nbytes + g.nbytes + x.nbytes + 8)
        assert status == 0
        view = lambda offset, like: np.frombuffer(memory.buf, like.dtype, like.size, offset).reshape(like.shape)
        view(0, x)[...] = x
        view(x.nbytes, g)[...] = g
        out_offset = x.nbytes + g.nbytes
        fields = dict(in_loc=x_loc, in_region=region if x_loc else 0, out_loc=out_loc,
                      out_region=region if out_loc else 0, out_offset=out_offset if out_loc else 0)
        request = backward_request(9, x, g, kind=2, kernel=3, stride=2, padding=1, ties=ties, g_loc=g_loc,
                                   g_region=region if g_loc else 0, g_offset=x.nbytes if g_loc else 0, **fields)
        assert len(request) == 1 + (x_loc == 0) + (g_loc == 0)
        kind, _, status, frames = raw.call(request)
        assert (kind, status) == (BACKWARD | 0x8000, 0), frames
        if out_loc:
            assert len(frames) == 1
            gradient = view(out_offset, x).copy()
        else:
            gradient = np.frombuffer(frames[1], np.float32).reshape(x.shape)
        np.testing.assert_array_equal(gradient, expected)
        assert raw.call([header(UNREGISTER, 6) + struct.pack("<Q", region)])[2] == 0
        memory.unlink()
        memory.close()


def test_backward_refusals_name_the_field(raw, shared_daemon):
    x = np.ones((1, 8, 2), np.float32)
    g = np.ones((1, 4, 2), np.float32)

    def refused(frames, status, fragment):
        kind, _, got, reply = raw.call(frames)
        message = reply[1].decode() if len(reply) > 1 else ""
        assert (kind, got) == (BACKWARD | 0x8000, STATUS[status]), message
        assert fragment in message, message

    refused(backward_request(1, x.astype(np.int32), g.astype(np.int32)), "DTYPE", "floating-point")
    refused(backward_request(1, x, g, ties=2), "INVALID_ARGUMENT", "max_ties is 2")
    refused(backward_request(1, x, g, g_bytes=4), "SHAPE", "grad_output_bytes is 4")
    refused(backward_request(1, x, g, out_bytes=g.nbytes), "SHAPE", "output_bytes")
    refused(backward_request(1, x, g)[:2], "PROTOCOL", "inline input and grad_output has 3 frame(s) but this one has 2")
    refused(backward_request(1, x, g) + [b""], "PROTOCOL", "frames")
    refused(backward_request(1, x, g)[0:1] + [x.tobytes(), g.tobytes()[:8]], "PROTOCOL", "frame 2 holds 8 bytes")
    refused([backward_request(1, x, g)[0][:-8]], "PROTOCOL", "frame 0 is 264 bytes")
    refused(backward_request(1, x, g, g_loc=1, g_region=123456), "NOT_FOUND", "123456")
    region, memory, status, _ = raw.register(4096)
    assert status == 0
    # The gradient may not overlap the cotangent; x and the cotangent may share bytes.
    refused(backward_request(1, x, g, g_loc=1, g_region=region, out_loc=1, out_region=region, out_offset=16),
            "LAYOUT", "overlaps grad_output")
    kind, _, status, frames = raw.call(backward_request(1, x, g, in_loc=1, in_region=region, g_loc=1, g_region=region,
                                                        out_loc=1, out_region=region, out_offset=1024))
    assert status == 0, frames
    refused(backward_request(1, x, g, g_loc=1, g_region=region, g_offset=4088), "INVALID_ARGUMENT", "exceeds region")
    memory.unlink()
    memory.close()
    big = np.ones((1, 1 << 17, 2), np.float32)  # 1 MiB: x, gradient and cotangent pass --max-job-bytes 1 MiB
    refused(backward_request(1, big, np.ones((1, 1 << 16, 2), np.float32))[:1], "TOO_LARGE", "--max-job-bytes")


def test_done_word_is_set_before_the_reply(raw):
    # The word is set (1 done, 2 failed) before the reply leaves, so it is already set when
    # the reply arrives; a client may sleep on it (a futex) instead of on the reply.
    x = np.random.randn(2, 8, 8, 3).astype(np.float32)
    out_bytes = 2 * 4 * 4 * 3 * 4
    word_offset = x.nbytes + out_bytes
    region, memory, status, _ = raw.register(word_offset + 8)
    assert status == 0
    np.frombuffer(memory.buf, np.float32, x.size)[:] = x.ravel()
    words = np.frombuffer(memory.buf, np.uint32, 2, offset=word_offset)

    def job(job_id, done_region=region, done_offset=word_offset, in_region=region):
        frames = pool_request(job_id, x, kind=1, in_loc=1, out_loc=1, in_region=in_region, out_region=region,
                              out_offset=x.nbytes)
        frames[0] = header(POOL, job_id, flags=1) + frames[0][24:] + struct.pack("<QQ", done_region, done_offset)
        return raw.call(frames)

    words[:] = 0
    _, job_id, status, frames = job(11)
    assert (job_id, status, len(frames)) == (11, 0, 1)
    assert words.tolist() == [1, 0]
    y = np.frombuffer(memory.buf, np.float32, out_bytes // 4, offset=x.nbytes).reshape(2, 4, 4, 3)
    np.testing.assert_array_equal(y, tidepool.avg_pool2d(x, 2))
    # A job refused once its word is known good still sets it: 2, and the reply says why.
    _, _, status, frames = job(12, done_offset=word_offset + 4, in_region=region + 1000)
    assert status == STATUS["NOT_FOUND"] and b"input_region" in frames[1]
    assert words.tolist() == [1, 2]
    # A word the daemon cannot check is never written; the reply names the field.
    words[:] = 0
    for done_region, done_offset, status_name, fragment in [
            (region + 1000, word_offset, "NOT_FOUND", b"done_region"),
            (region, word_offset + 2, "LAYOUT", b"done_offset"),
            (region, x.nbytes, "LAYOUT", b"overlaps the output"),
            (region, word_offset + 8, "INVALID_ARGUMENT", b"done_offset")]:
        _, _, status, frames = job(13, done_region, done_offset)
        assert status == STATUS[status_name] and fragment in frames[1], (status, frames)
    assert words.tolist() == [0, 0]
    del y, words
    memory.unlink()
    memory.close()


X = np.zeros((1, 4, 4, 2), np.float32)


def pool(**fields):
    """A POOL request on X with some body fields replaced."""
    defaults = dict(shape=X.shape, dtype_code=1, kind=1, kernel=2, stride=2, padding=0)
    defaults.update(fields)
    return header(POOL, 3) + pool_body(**defaults)


INVALID_REQUESTS = [
    # (name, frames, status, fragment of the message)
    ("short header", [b"TPOL"], "PROTOCOL", "shorter than the 24-byte header"),
    ("random bytes", [os.urandom(64)], "PROTOCOL", "magic"),
    ("wrong magic", [header(PING, 1, magic=0x12345678)], "PROTOCOL", "magic is 0x12345678"),
    ("wrong version", [header(PING, 1, version=9)], "VERSION", "protocol version is 9"),
    ("unknown type", [header(77, 1)], "PROTOCOL", "message type 77 is unknown"),
    ("too many frames", [header(PING, 1), b"a", b"b", b"c"], "PROTOCOL", "4 frames"),
    ("ping with a payload", [header(PING, 1), b"x"], "PROTOCOL", "1 frame(s) but this one has 2"),
    ("flags", [header(STATS, 1, flags=2)], "FLAGS", "flags is 0x2"),
    ("short pool frame", [header(POOL, 1) + b"\0" * 8], "PROTOCOL", "frame 0 is 232 bytes"),
    ("pool flags", [header(POOL, 1, flags=16) + pool_body(X.shape, 1, 1, 2, 2, 0), X.tobytes()], "FLAGS",
     "only bit 0 (done word), bit 1 (resubmitted), bit 2 (ceil_mode) and bit 3 (count_include_pad=False) are defined"),
    ("max without padding counted", [header(POOL, 1, flags=8) + pool_body(X.shape, 1, 2, 2, 2, 0), X.tobytes()],
     "INVALID_ARGUMENT", "count_include_pad=False applies to average pooling only"),
    ("done word flag without its fields", [header(POOL, 1, flags=1) + pool_body(X.shape, 1, 1, 2, 2, 0), X.tobytes()],
     "PROTOCOL", "248 bytes with a done word but this one is 232"),
    ("kind", [pool(kind=7), X.tobytes()], "INVALID_ARGUMENT", "kind is 7"),
    ("dtype", [pool(dtype_code=42), X.tobytes()], "DTYPE", "dtype is 42"),
    ("spatial dims", [pool(spatial=4), X.tobytes()], "INVALID_ARGUMENT", "spatial_dims must be 1, 2 or 3 but is 4"),
    ("rank", [pool(rank=5), X.tobytes()], "SHAPE", "rank must be spatial_dims + 2 = 4 but is 5"),
    ("negative shape", [pool(shape=(1, -4, 4, 2), in_bytes=0, out_bytes=0), b""], "SHAPE", "shape[1] is -4"),
    ("huge shape", [pool(shape=(1, 1 << 50, 4, 2), in_bytes=0, out_bytes=0), b""], "SHAPE", "between 0 and 2^40"),
    ("kernel 0", [pool(kernel=0, out_bytes=0), X.tobytes()], "INVALID_ARGUMENT", "kernel_size must be positive"),
    ("negative output", [pool(kernel=9, stride=1, out_bytes=0), X.tobytes()], "SHAPE", "would be negative"),
    ("overflowing bytes", [pool(shape=(1 << 40, 1 << 40, 4, 2), in_bytes=0, out_bytes=0), b""], "OVERFLOW", "overflows"),
    ("input bytes", [pool(in_bytes=12), X.tobytes()], "SHAPE", "input_bytes is 12 but shape (1, 4, 4, 2) of float32 needs 128"),
    ("output bytes", [pool(out_bytes=4), X.tobytes()], "SHAPE", "output_bytes is 4"),
    ("too large", [pool(shape=(1, 1024, 256, 1)), b""], "TOO_LARGE", "--max-job-bytes"),
    ("location", [pool(in_loc=3), X.tobytes()], "PROTOCOL", "input_location is 3"),
    ("inline with region", [pool(in_region=5), X.tobytes()], "PROTOCOL", "must be 0 for an inline input"),
    ("inline frame missing", [pool()], "PROTOCOL", "has 2 frame(s) but this one has 1"),
    ("inline frame size", [pool(), X.tobytes()[:-4]], "PROTOCOL", "frame 1 holds 124 bytes but input_bytes is 128"),
    ("unknown region", [pool(in_loc=1, in_region=123456)], "NOT_FOUND", "input_region 123456 was registered with another"),
    ("misaligned offset", [pool(in_loc=1, in_region=1, in_offset=2)], "LAYOUT", "input_offset 2 is not a multiple"),
    ("overlap", [pool(in_loc=1, out_loc=1, in_region=9, out_region=9, out_offset=64)], "LAYOUT", "overlaps input"),
    ("unregister unknown", [header(UNREGISTER, 1) + struct.pack("<Q", 424242)], "NOT_FOUND", "region 424242"),
]


@pytest.mark.parametrize("name, frames, status, fragment", INVALID_REQUESTS, ids=[r[0] for r in INVALID_REQUESTS])
def test_invalid_requests_get_their_error(raw, name, frames, status, fragment):
    kind, _, got, reply = raw.call(frames)
    message = reply[1].decode() if len(reply) > 1 else ""
    assert got == STATUS[status], f"{name}: status {got}, message {message!r}"
    assert len(reply[0]) == 24
    assert fragment in message, f"{name}: {message!r}"


def test_region_rules(raw, shared_daemon):
    region, memory, status, _ = raw.register(256)
    assert status == 0
    # Another client cannot use this client's region.
    other = RawClient(shared_daemon.endpoint)
    _, _, status, reply = other.call([pool(in_loc=1, in_region=region)])
    assert status == STATUS["NOT_FOUND"] and b"not registered by this client" in reply[1]
    other.close()
    # Offset + bytes beyond the region.
    _, _, status, reply = raw.call([pool(in_loc=1, in_region=region, in_offset=192)])
    assert status == STATUS["INVALID_ARGUMENT"] and b"exceeds region" in reply[1]
    # A region truncated by its owner: the daemon absorbs the fault and fails the job.
    os.ftruncate(memory._fd, 0)
    _, _, status, reply = raw.call([pool(in_loc=1, in_region=region)])
    assert status == STATUS["SYSTEM"] and b"truncated" in reply[1], reply
    _, _, status, _ = raw.call([pool(in_loc=1, in_region=region)])
    assert status == STATUS["NOT_FOUND"]  # it was unregistered
    memory.unlink()
    memory.close()


def test_register_rules(raw):
    _, memory, status, reply = raw.register(4096, mode=0o644)
    assert status == STATUS["PERMISSION"] and b"it must be private (0600)" in reply[1]
    memory.unlink()
    memory.close()
    frame0 = header(REGISTER, 1) + struct.pack("<QII", 4096, os.getpid(), 0)
    _, _, status, reply = raw.call([frame0, b"/etc-passwd"])
    assert status == STATUS["INVALID_ARGUMENT"] and b"not a Tidepool shared-memory name" in reply[1]
    _, _, status, reply = raw.call([frame0, b"/tidepool-does-not-exist"])
    assert status == STATUS["SYSTEM"] and b"No such file" in reply[1]
    _, memory, status, reply = raw.register(64)
    assert status == 0
    frame0 = header(REGISTER, 1) + struct.pack("<QII", 1 << 19, os.getpid(), 0)
    small = make_object(64)
    _, _, status, reply = raw.call([frame0, small._name.encode()])
    assert status == STATUS["SYSTEM"] and b"smaller than" in reply[1]
    small.unlink()
    small.close()
    _, _, status, reply = raw.call([header(REGISTER, 1) + struct.pack("<QII", 64, 0, 0), b"/tidepool-x"])
    assert status == STATUS["INVALID_ARGUMENT"] and b"pid" in reply[1]
    # The kernel says which process asks: another pid in the message is refused.
    _, _, status, reply = raw.call([header(REGISTER, 1) + struct.pack("<QII", 64, 1, 0), f"/{memory.name}".encode()])
    assert status == STATUS["PERMISSION"] and b"says pid 1 but the connection belongs to process" in reply[1]
    memory.unlink()
    memory.close()


def test_replies_under_max_inflight_are_results_or_busy():
    # Whether a job finds the daemon full depends on timing; TidepoolServerTests checks BUSY
    # deterministically. Here: every reply is a result or a BUSY that says what to do.
    running = Daemon("--max-inflight", "1")
    try:
        client = RawClient(running.endpoint)
        x = np.random.randn(2, 32, 32, 32, 8).astype(np.float32)
        for job in range(8):
            client.socket.send_multipart(pool_request(job, x, kind=1, kernel=3, stride=1, padding=1))
        for _ in range(8):
            assert client.socket.poll(30000)
            _, _, status, frames = parse_reply(client.socket.recv_multipart())
            assert status in (0, STATUS["BUSY"])
            if status:
                assert b"--max-inflight 1" in frames[1]
        assert client.ping_ok()
        client.close()
    finally:
        assert running.stop() == 0


def test_eight_clients_with_jobs_in_flight_get_their_own_results():
    # Jobs from 0.1 ms to a few ms, sent all at once by 8 clients: the leader runs each job it
    # takes and hands the lead over when more requests wait, so replies come from many
    # threads. Each reply must carry its own job's result, and none may be lost.
    running = Daemon("--max-inflight", "64")
    try:
        rng = np.random.default_rng(64)
        shapes = [(1, 4, 5, 6, 2), (2, 24, 32, 32, 8), (1, 9, 7, 5, 3), (1, 40, 40, 40, 4)]
        jobs = {(c, j): (rng.standard_normal(shapes[(c + j) % 4]).astype(np.float32), 1 + (c * j) % 2)
                for c in range(8) for j in range(6)}
        results, errors = {}, []
        start = threading.Barrier(8)

        def client_work(c):
            client = RawClient(running.endpoint)
            try:
                start.wait()
                for j in range(6):
                    x, kind = jobs[(c, j)]
                    client.socket.send_multipart(pool_request(100 * c + j, x, kind=kind, kernel=3, stride=1, padding=1))
                for _ in range(6):
                    assert client.socket.poll(30000), "no reply"
                    _, job_id, status, frames = parse_reply(client.socket.recv_multipart())
                    assert status == 0, frames[1:]
                    assert job_id // 100 == c, f"client {c} got job {job_id}"
                    results[(c, job_id % 100)] = frames[1]
            except Exception as error:  # reported below with the client's index
                errors.append((c, repr(error)))
            finally:
                client.close()

        threads = [threading.Thread(target=client_work, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(results) == sorted(jobs)
        for (c, j), (x, kind) in jobs.items():
            pool = tidepool.avg_pool3d if kind == 1 else tidepool.max_pool3d
            assert results[(c, j)] == pool(x, 3, 1, 1).tobytes(), (c, j)
        checker = RawClient(running.endpoint)
        assert checker.ping_ok()
        checker.close()
    finally:
        assert running.stop() == 0, running.logs()
