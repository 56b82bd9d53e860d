"""A hostile client of tidepoold: random and mutated messages of every type, from several
connections, interleaved with valid jobs whose results are checked. Every message must be
answered with a well-formed reply, every checked job must be exact, and the daemon's memory
and descriptors must stay bounded.

    python hostile.py ENDPOINT DAEMON_PID [--messages N] [--seed S]

`make fuzz` runs it for 10^5 messages; the test suite for a few thousand (test_hostile.py)."""

import argparse
import json
import os
import random
import struct
import sys
import time

import numpy as np
import zmq

import tidepool
from conftest import assert_pool_close, reference_pool
from rawproto import (BACKWARD, BYE, DONE_WORD, DTYPES, MAGIC, PING, POOL, REGISTER, RESUBMITTED, STATS, UNREGISTER,
                      VERSION, RawClient, backward_request, header, make_object, output_shape, pool_request,
                      register_request)

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 255, 256, 2**15, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**40 + 1, 2**55,
               2**62, 2**62 + 1, 2**63 - 4, 2**63 - 1, 2**63, 2**64 - 4, 2**64 - 1]
FIELD_WIDTHS = (1, 2, 4, 8)


def rss_and_fds(pid):
    """The daemon's own memory (RssAnon: not the clients' shared memory it maps, which is
    theirs, in tmpfs) and its open descriptors."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def receive_reply(socket, timeout_ms=10000):
    """The next reply on `socket`, or None. A reply to a request that began with an empty
    frame (REQ style) comes after an empty delimiter."""
    if not socket.poll(timeout_ms):
        return None
    frames = socket.recv_multipart()
    while frames and frames[0] == b"":
        frames = frames[1:]
    return frames


class Hostile:
    def __init__(self, endpoint, daemon_pid, seed=0, max_job_bytes=1 << 20):
        self.endpoint = endpoint
        self.daemon_pid = daemon_pid
        self.random = random.Random(seed)
        self.rng = np.random.default_rng(seed)
        self.max_job_bytes = max_job_bytes
        self.context = zmq.Context()
        self.objects = []  # every shared-memory object made, unlinked at the end
        # Connections that receive hostile messages, each with regions of its own.
        self.hostile = [self.connect() for _ in range(3)]
        # One connection that only sends valid jobs, so its regions stay registered.
        self.checker = self.connect()
        self.stats = dict(messages=0, replies=0, checked_jobs=0, reconnects=0, statuses={})

    def connect(self):
        client = RawClient(self.endpoint, self.context)
        regions = []
        for size in (4096, 65536):
            memory = make_object(size)
            self.objects.append(memory)
            _, _, status, frames = client.call(register_request(1, size, memory._name))
            assert status == 0, frames
            regions.append((struct.unpack("<Q", frames[0][24:32])[0], memory))
        return client, regions

    def close(self):
        for client, _ in self.hostile + [self.checker]:
            client.close()
        for memory in self.objects:
            try:
                memory.unlink()
            except FileNotFoundError:
                pass
            memory.close()
        self.context.term()

    # ---- messages ----------------------------------------------------------------------

    def valid_message(self, regions):
        """A valid request of a random type, using this connection's regions."""
        r = self.random
        kind = r.choice([PING, STATS, BYE, REGISTER, UNREGISTER, POOL, POOL, POOL, POOL, BACKWARD, BACKWARD])
        job_id = r.getrandbits(64)
        if kind in (PING, STATS, BYE):
            return [header(kind, job_id)]
        if kind == UNREGISTER:
            return [header(UNREGISTER, job_id) + struct.pack("<Q", r.choice(regions)[0])]
        if kind == REGISTER:
            memory = r.choice(regions)[1]
            return register_request(job_id, memory.size, memory._name)
        region, memory = r.choice(regions)
        d = r.randint(1, 3)
        dtype = r.choice([t for t in DTYPES if t.kind == "f" or kind == POOL])
        shape = (r.randint(0, 2), *[r.randint(0, 6) for _ in range(d)], r.randint(0, 4))
        x = np.zeros(shape, dtype)
        kernel, stride, padding = r.randint(1, 3), r.randint(1, 3), r.randint(0, 1)
        fields = {}
        if r.random() < 0.5:
            fields.update(in_loc=1, in_region=region, in_offset=r.choice([0, 64, 1024]))
        if r.random() < 0.5:
            fields.update(out_loc=1, out_region=region, out_offset=r.choice([2048, 3072]))
        done = (region, r.choice([4000, 4092, 1 << 12])) if r.random() < 0.3 else None
        flags = RESUBMITTED if r.random() < 0.1 else 0
        if kind == BACKWARD:
            g = np.zeros(tuple(max(n, 0) for n in output_shape(shape, kernel, stride, padding)), dtype)
            if r.random() < 0.5:
                fields.update(g_loc=1, g_region=region, g_offset=r.choice([0, 512, 1024]))
            return backward_request(job_id, x, g, kind=r.choice([1, 2]), kernel=kernel, stride=stride, padding=padding,
                                    ties=r.choice([0, 1]), flags=flags, done=done, **fields)
        return pool_request(job_id, x, kind=r.choice([1, 2]), kernel=kernel, stride=stride, padding=padding,
                            flags=flags, done=done, **fields)

    def mutate(self, frames):
        """Bit flips, overwritten fields (values where arithmetic breaks), cut or grown
        frames, frames added, dropped or swapped."""
        r = self.random
        frames = [bytearray(f) for f in frames]
        for _ in range(r.randint(1, 4)):
            frame = r.choice(frames)
            choice = r.random()
            if choice < 0.45 and len(frame) >= 8:
                width = r.choice(FIELD_WIDTHS)
                offset = r.randrange(0, max(1, len(frame) - width + 1))
                offset -= offset % width
                value = r.choice(INTERESTING) % (1 << (8 * width))
                if r.random() < 0.3:
                    value = (-value) % (1 << (8 * width))
                frame[offset:offset + width] = value.to_bytes(width, "little")
            elif choice < 0.65 and frame:
                position = r.randrange(len(frame))
                frame[position] ^= 1 << r.randrange(8)
            elif choice < 0.75:
                del frame[r.randrange(len(frame) + 1):]
            elif choice < 0.82:
                frame.extend(r.randbytes(r.randint(1, 64)))
            elif choice < 0.88:
                frames.append(bytearray(r.randbytes(r.randint(0, 300))))
            elif choice < 0.93 and len(frames) > 1:
                frames.pop(r.randrange(len(frames)))
            elif len(frames) > 1:
                frames.reverse()
        return [bytes(f) for f in frames[:4]]

    def random_message(self):
        r = self.random
        count = r.randint(1, 3)
        first = header(r.choice([0, PING, POOL, REGISTER, UNREGISTER, STATS, BYE, 7, 0x8002]), r.getrandbits(64),
                       r.getrandbits(32) if r.random() < 0.3 else 0) if r.random() < 0.7 else b""
        return [first + r.randbytes(r.choice([0, 8, 16, 208, 224, r.randint(0, 300)]))] + [
            r.randbytes(r.randint(0, 256)) for _ in range(count - 1)]

    # ---- checked jobs ------------------------------------------------------------------

    def checked_job(self):
        """A valid job on the checker's connection, inline or in shared memory, compared
        with the in-process engine (bit for bit) and the float64 reference."""
        r = self.random
        client, regions = self.checker
        d = r.randint(1, 3)
        dtype = r.choice([np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int16), np.dtype(np.uint8)])
        kind = r.choice(["Avg", "Max"])
        shape = (r.randint(1, 2), *[r.randint(1, 7) for _ in range(d)], r.randint(1, 4))
        kernel, stride = r.randint(1, 3), r.randint(1, 3)
        padding = r.randint(0, kernel // 2)
        # Unit-scale floats: the reference's tolerance (conftest.tolerance) is for them.
        x = self.rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else \
            self.rng.integers(0, 200, size=shape).astype(dtype)
        function = getattr(tidepool, f"{kind.lower()}_pool{d}d")
        try:
            expected = function(x, kernel, stride, padding)
        except ValueError:
            return
        code = 1 if kind == "Avg" else 2
        region, memory = regions[1]
        fields = {}
        if r.random() < 0.5 and x.nbytes <= 16384:
            np.frombuffer(memory.buf, np.uint8, x.nbytes)[:] = x.view(np.uint8).ravel()
            fields.update(in_loc=1, in_region=region)
        if r.random() < 0.5 and expected.nbytes <= 16384:
            fields.update(out_loc=1, out_region=region, out_offset=32768)
        _, job_id, status, frames = client.call(
            pool_request(r.getrandbits(63), x, kind=code, kernel=kernel, stride=stride, padding=padding, **fields))
        assert status == 0, frames[1:]
        if fields.get("out_loc"):
            got = np.frombuffer(memory.buf, expected.dtype, expected.size, offset=32768).reshape(expected.shape).copy()
        else:
            got = np.frombuffer(frames[1], expected.dtype).reshape(expected.shape)
        assert got.tobytes() == expected.tobytes(), (kind, d, shape, kernel, stride, padding, dtype)
        assert_pool_close(kind, got, reference_pool(kind, d, x, kernel, stride, padding), dtype)
        self.stats["checked_jobs"] += 1

    def checked_backward_job(self):
        """A valid BACKWARD job on the checker's connection, compared bit for bit with the
        in-process tidepool.*_vjp."""
        r = self.random
        client, regions = self.checker
        d = r.randint(1, 3)
        dtype = r.choice([np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)])
        kind = r.choice(["Avg", "Max"])
        shape = (r.randint(1, 2), *[r.randint(1, 7) for _ in range(d)], r.randint(1, 4))
        kernel, stride = r.randint(1, 3), r.randint(1, 3)
        padding = r.randint(0, kernel // 2)
        out = output_shape(shape, kernel, stride, padding)
        if min(out) < 0:
            return
        # Small integers: max windows tie, so the tie rule matters.
        x = self.rng.integers(-2, 3, size=shape).astype(dtype)
        g = self.rng.standard_normal(out).astype(dtype)
        ties = r.choice(["split", "first"])
        expected = getattr(tidepool, f"{kind.lower()}_pool{d}d_vjp")(x, g, kernel, stride, padding, ties=ties)
        region, memory = regions[1]
        fields = {}
        if r.random() < 0.5 and x.nbytes + g.nbytes <= 16384:
            np.frombuffer(memory.buf, np.uint8, x.nbytes)[:] = x.view(np.uint8).ravel()
            np.frombuffer(memory.buf, np.uint8, g.nbytes, offset=16384)[:] = g.view(np.uint8).ravel()
            fields.update(in_loc=1, in_region=region, g_loc=1, g_region=region, g_offset=16384)
        if r.random() < 0.5 and expected.nbytes <= 16384:
            fields.update(out_loc=1, out_region=region, out_offset=32768)
        _, _, status, frames = client.call(backward_request(
            r.getrandbits(63), x, g, kind=1 if kind == "Avg" else 2, kernel=kernel, stride=stride, padding=padding,
            ties=("split", "first").index(ties), **fields))
        assert status == 0, frames[1:]
        if fields.get("out_loc"):
            got = np.frombuffer(memory.buf, dtype, x.size, offset=32768).reshape(shape).copy()
        else:
            got = np.frombuffer(frames[1], dtype).reshape(shape)
        assert got.tobytes() == expected.tobytes(), (kind, d, shape, kernel, stride, padding, dtype, ties)
        self.stats["checked_jobs"] += 1

    # ---- the run -----------------------------------------------------------------------

    def run(self, messages, sample_every=500):
        r = self.random
        samples = []
        warm = None
        started = time.monotonic()
        while self.stats["messages"] < messages:
            if r.random() < 0.08:
                self.checked_job() if r.random() < 0.7 else self.checked_backward_job()
                continue
            index = r.randrange(len(self.hostile))
            if r.random() < 0.004:
                # A connection that goes away without a word, and comes back as another.
                self.hostile[index][0].close()
                self.hostile[index] = self.connect()
                self.stats["reconnects"] += 1
                continue
            client, regions = self.hostile[index]
            choice = r.random()
            if choice < 0.2:
                frames = self.random_message()
            elif choice < 0.3:
                frames = self.valid_message(regions)
            else:
                frames = self.mutate(self.valid_message(regions))
            client.socket.send_multipart(frames)
            self.stats["messages"] += 1
            reply = receive_reply(client.socket)
            assert reply is not None, f"no reply to message {self.stats['messages']}: {[f[:48].hex() for f in frames]}"
            magic, version, kind, _, status, _ = struct.unpack("<IHHQiI", reply[0][:24])
            assert (magic, version) == (MAGIC, VERSION) and kind & 0x8000, reply
            assert status == 0 or (len(reply) == 2 and reply[1]), f"an error reply without a message: {reply}"
            self.stats["replies"] += 1
            self.stats["statuses"][status] = self.stats["statuses"].get(status, 0) + 1
            if self.stats["messages"] % sample_every == 0:
                samples.append(rss_and_fds(self.daemon_pid))
                if warm is None and self.stats["messages"] >= messages // 10:
                    warm = samples[-1]
        assert self.checker[0].ping_ok(), "the daemon stopped serving"
        end = rss_and_fds(self.daemon_pid)
        warm = warm or samples[0] if samples else end
        self.stats.update(seconds=round(time.monotonic() - started, 1), rss_warm=warm[0], rss_end=end[0],
                          rss_max=max([s[0] for s in samples] + [end[0]]), fds_warm=warm[1], fds_end=end[1])
        return self.stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint", nargs="?")
    parser.add_argument("daemon_pid", type=int, nargs="?")
    parser.add_argument("--spawn", action="store_true", help="start a daemon of this repository's build and stop it after")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--max-job-bytes", type=int, default=1 << 20)
    arguments = parser.parse_args()
    daemon = None
    if arguments.spawn:
        from conftest import Daemon

        daemon = Daemon("--max-job-bytes", str(arguments.max_job_bytes))
        arguments.endpoint, arguments.daemon_pid = daemon.endpoint, daemon.process.pid
    elif arguments.endpoint is None or arguments.daemon_pid is None:
        parser.error("give ENDPOINT and DAEMON_PID, or --spawn")
    hostile = Hostile(arguments.endpoint, arguments.daemon_pid, arguments.seed, arguments.max_job_bytes)
    try:
        stats = hostile.run(arguments.messages)
    finally:
        hostile.close()
    stats["seed"] = arguments.seed
    failures = []
    if daemon is not None:
        code = daemon.stop()
        stats["daemon_exit"] = code
        if code != 0:
            failures.append(f"the daemon exited with {code}: {daemon.logs()[-2000:]}")
    print("hostile:", json.dumps(stats, sort_keys=True))
    growth = stats["rss_end"] - stats["rss_warm"]
    if growth > 32 << 20 or stats["fds_end"] > stats["fds_warm"] + 8:
        failures.append(f"the daemon grew by {growth} bytes of RSS, {stats['fds_end'] - stats['fds_warm']} descriptors")
    if failures:
        print("hostile: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
