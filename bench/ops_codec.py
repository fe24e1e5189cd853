"""Request decoding on the node: msgspec's typed decode (what `ops.decode_request` does, with
validation) against a plain `msgpack.unpackb` of the same frame (decoding only, before any
checks: the floor of the hand-written path that msgspec replaced). Same run, same frames.

    python -m bench.ops_codec [--n 100000]
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

import msgpack
import msgspec

from esdb_node import ops, record

ENCODER = msgspec.msgpack.Encoder()


def frames() -> dict[str, bytes]:
    def append(n: int) -> bytes:
        events = [
            record.encode_event(uuid.uuid4().bytes, "OrderPlaced", b'{"total": 42, "n": %d}' % i)
            for i in range(n)
        ]
        return ENCODER.encode(ops.Append(id=7, stream="order-1", expected=-2, events=events))

    return {
        "append, 1 event": append(1),
        "append, 100 events": append(100),
        "read_stream": ENCODER.encode(ops.ReadStream(id=7, stream="order-1", from_=0, limit=100)),
        "status": ENCODER.encode(ops.Status(id=7)),
    }


def per_call_us(fn: Callable[[bytes], object], frame: bytes, n: int) -> float:
    for _ in range(1000):
        fn(frame)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn(frame)
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{'frame':<22} {'decode_request':>15} {'msgpack.unpackb':>16} {'ratio':>6}")
    for name, frame in frames().items():
        typed = per_call_us(ops.decode_request, frame, args.n)
        plain = per_call_us(lambda b: msgpack.unpackb(b, raw=False), frame, args.n)
        print(f"{name:<22} {typed:>12.2f} µs {plain:>13.2f} µs {typed / plain:>6.2f}")


if __name__ == "__main__":
    main()
