"""Cost of the metrics hooks on the append path (docs/http.md quotes the result).

    python -m bench.metrics_hook [--n 200000]

Times N awaits of a trivial append handler through the dispatcher, with and without the
metrics observer, in one event loop; and N `batch_flushed` calls. Prints microseconds per
call: the difference is what every append pays for metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from esdb_node import ops, record
from esdb_node.deadline import Deadline
from esdb_node.layout import DataDir
from esdb_node.server.dispatch import Context, Dispatcher, handles
from esdb_node.server.metrics import NodeMetrics


class _Trivial:
    @handles(ops.Append)
    async def append(self, req: ops.Append, ctx: Context) -> int:
        return len(req.events)


async def _per_call(dispatcher: Dispatcher, req: ops.Append, n: int) -> float:
    handler = dispatcher.unary(req)
    ctx = Context(Deadline.after(10))
    for _ in range(1000):  # warm up
        await handler(req, ctx)
    started = time.perf_counter()
    for _ in range(n):
        await handler(req, ctx)
    return (time.perf_counter() - started) / n * 1e6


async def run(n: int) -> dict[str, float]:
    req = ops.Append(
        stream="bench-1",
        events=[record.encode_event(uuid.uuid4().bytes, "T", b'{"x":1}')],
    )
    with TemporaryDirectory() as tmp:
        metrics = NodeMetrics(service=Any, files=DataDir(Path(tmp)))  # type: ignore[arg-type]
        plain = Dispatcher()
        plain.add(_Trivial())
        observed = Dispatcher(metrics)
        observed.add(_Trivial())
        base = min([await _per_call(plain, req, n) for _ in range(3)])
        hooked = min([await _per_call(observed, req, n) for _ in range(3)])
        started = time.perf_counter()
        for _ in range(n):
            metrics.batch_flushed(8, 1024, 0.0005)
        batch = (time.perf_counter() - started) / n * 1e6
    return {"handler_us": base, "observed_us": hooked, "hook_us": hooked - base,
            "batch_hook_us": batch}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    result = asyncio.run(run(args.n))
    for key, value in result.items():
        print(f"{key:14} {value:8.3f}")


if __name__ == "__main__":
    main()
