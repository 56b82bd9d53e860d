#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (committed under fuzz/corpus/): valid
conversations with the daemon, from docs/protocol.md, and C ABI calls that pool."""

import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bindings" / "python" / "tests"))
from rawproto import BACKWARD, BYE, PING, POOL, RESUBMITTED, STATS, UNREGISTER, header, output_shape, pool_body  # noqa: E402

REGION = [0x7469_6465_0000_0000 + n for n in (1, 2, 3)]  # the fuzz target's regions (4096, 16384, 65536 bytes)
LOCAL, OTHER, TCP = 0, 4, 8


def record(frames, peer=LOCAL):
    flags = {1: 0, 2: 1, 3: 2}[len(frames)] | peer
    lengths = [len(f) for f in frames] + [0, 0]
    return struct.pack("<BHH", flags, lengths[0], lengths[1]) + b"".join(frames)


def pool(job_id, shape, dtype_code, itemsize, kind=1, kernel=2, stride=2, padding=0, flags=0, done=None, **fields):
    out_itemsize = 4 if kind == 1 and dtype_code >= 5 else itemsize
    frame0 = header(POOL, job_id, flags | (1 if done else 0)) + pool_body(
        shape, dtype_code, kind, kernel, stride, padding, itemsize=itemsize, out_itemsize=out_itemsize, **fields)
    if done:
        frame0 += struct.pack("<QQ", *done)
    count = 1
    for n in shape:
        count *= n
    return [frame0] if fields.get("in_loc") else [frame0, bytes(count * itemsize)]


def backward(job_id, shape, dtype_code, itemsize, kind=1, kernel=2, stride=2, padding=0, ties=0, g_loc=0, g_region=0,
             g_offset=0, done=None, **fields):
    """A BACKWARD request: x and the cotangent inline unless their location is 1."""
    count = 1
    for n in shape:
        count *= n
    g_count = 1
    for n in output_shape(shape, kernel, stride, padding):
        g_count *= n
    fields.setdefault("out_bytes", count * itemsize)
    frame0 = header(BACKWARD, job_id, 1 if done else 0) + pool_body(
        shape, dtype_code, kind, kernel, stride, padding, itemsize=itemsize, **fields)
    frame0 += struct.pack("<iI3Q", ties, g_loc, g_region, g_offset, g_count * itemsize)
    if done:
        frame0 += struct.pack("<QQ", *done)
    return [frame0] + ([bytes(count * itemsize)] if not fields.get("in_loc") else []) + \
        ([bytes(g_count * itemsize)] if not g_loc else [])


def daemon_seeds():
    seeds = {
        "ping": record([header(PING, 1)]),
        "stats": record([header(STATS, 2)]),
        "bye": record([header(BYE, 3)]),
        "unregister": record([header(UNREGISTER, 4) + struct.pack("<Q", REGION[0])]),
        "ping-tcp": record([header(PING, 5)], TCP),
        "inline-2d": record(pool(6, (1, 8, 8, 3), 1, 4)),
        "inline-3d-max": record(pool(7, (1, 4, 6, 6, 2), 2, 8, kind=2, kernel=3, stride=1, padding=1)),
        "inline-1d-int8": record(pool(8, (2, 16, 1), 5, 1, kernel=4, stride=3, padding=2)),
        "region-in-out": record(pool(9, (1, 16, 1), 1, 4, kind=2, in_loc=1, out_loc=1, in_region=REGION[0],
                                     out_region=REGION[0], out_offset=64)),
        "region-done-word": record(pool(10, (1, 16, 1), 1, 4, in_loc=1, out_loc=1, in_region=REGION[1],
                                        out_region=REGION[2], out_offset=1024, done=(REGION[0], 4092))),
        "region-resubmitted": record(pool(11, (1, 16, 1), 1, 4, flags=RESUBMITTED, in_loc=1, out_loc=1,
                                          in_region=REGION[0], out_region=REGION[0], out_offset=64)),
        "other-process": record(pool(12, (1, 16, 1), 1, 4, in_loc=1, in_region=REGION[0]), OTHER),
        "conversation": b"".join([
            record(pool(13, (1, 16, 1), 1, 4, in_loc=1, out_loc=1, in_region=REGION[0], out_region=REGION[1])),
            record([header(UNREGISTER, 14) + struct.pack("<Q", REGION[0])]),
            record(pool(15, (1, 16, 1), 1, 4, in_loc=1, out_loc=1, in_region=REGION[0], out_region=REGION[1])),
            record([header(BYE, 16)]),
        ]),
    }
    seeds.update({
        "backward-inline-2d-max": record(backward(30, (1, 6, 5, 2), 1, 4, kind=2, kernel=3, stride=1, padding=1)),
        "backward-inline-1d-avg-f16": record(backward(31, (2, 9, 1), 3, 2, kernel=3, stride=2, padding=1, ties=1)),
        "backward-region-3d": record(backward(32, (1, 4, 4, 4, 2), 2, 8, kind=2, kernel=2, stride=1, ties=1,
                                              in_loc=1, in_region=REGION[1], out_loc=1, out_region=REGION[2],
                                              g_loc=1, g_region=REGION[1], g_offset=8192, done=(REGION[0], 4088))),
        "backward-cotangent-inline": record(backward(33, (1, 16, 1), 4, 2, kind=2, in_loc=1, in_region=REGION[0])),
    })
    # Every input is also parsed as a CurveZMQ certificate: one seed is a real one (the key pair
    # of zmq_curve(7)'s example).
    seeds["curve-certificate"] = (b'#   ZeroMQ CURVE **Secret** Certificate\n\nmetadata\ncurve\n'
                                  b'    public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"\n'
                                  b'    secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"\n')
    for code, itemsize in [(2, 8), (3, 2), (4, 2), (6, 2), (7, 4), (8, 8), (9, 1), (10, 2), (11, 4), (12, 8)]:
        seeds[f"inline-dtype-{code}"] = record(pool(20 + code, (1, 6, 5, 2), code, itemsize, kind=1 + code % 2,
                                                    kernel=2, stride=1, padding=1))
    return seeds


def cabi_seeds():
    # The C ABI target reads its input as a stream of small choices; any bytes are a call.
    # Seeds: all-default choices (a pooling that runs), and a spread of random streams.
    seeds = {"defaults": bytes(64), "ones": bytes([1]) * 128}
    generator = __import__("random").Random(13)
    for n in range(24):
        seeds[f"random-{n:02}"] = bytes(generator.randrange(256) for _ in range(generator.randint(40, 200)))
    return seeds


def main():
    for target, seeds in (("tidepool-fuzz-daemon", daemon_seeds()), ("tidepool-fuzz-cabi", cabi_seeds())):
        directory = HERE / "corpus" / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds in {directory.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
