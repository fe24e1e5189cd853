"""esdb load generator: pre-encoded, pipelined requests over the documented wire protocol.

    python bench/loadgen.py append --url esdb://127.0.0.1:2113 --clients 64 --batch 1
    python bench/loadgen.py read --url esdb://127.0.0.1:2113 --limit 100000

It speaks docs/protocol.md itself (4-byte big-endian length + a msgpack map, `hello` first
with id 0) rather than going through esdb_node's client, so that the load it offers does not
depend on, or pay for, the client library, and it measures what a lean client would see.

* Each append request is encoded once per client slot, its events in the documented event
  layout (docs/protocol.md: a 24-byte header, type, metadata, data). Sending one patches only
  the event ids in place: 8 random bytes per process and run, then a 64-bit counter, so every
  event id is unique. The request id is the slot's own number on its connection (one request
  in flight per slot keeps it unique among in-flight requests, as the protocol asks).
* `clients` slots are closed loops (one request in flight each, on its own stream) spread over
  `processes` worker processes and `conns` connections per process: requests from the slots
  of a connection are pipelined on it. etcd's loader does the same with goroutines over gRPC
  connections.
* Every run is bounded by time and by a request count; latency is per request, from the
  moment it is written to the moment its reply is parsed; each worker reports its own CPU
  time over the measured window, so the report shows whether the generator was the limit.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import inspect
import json
import multiprocessing
import os
import resource
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from bench.results import Run

FRAME = struct.Struct(">I")
U64 = struct.Struct(">Q")
PROTOCOL_VERSION = 2
CLIENT_NAME = "esdb-bench-loadgen/2"
EVENT_TYPE = "BenchEvent"
EVENT_HEAD = struct.Struct(">BBHI")  # event layout 1, flags, type length, metadata length
RECORD_HEAD = struct.Struct(">IBBHQQQBBHI16s")  # CRC, record head, event head (56 bytes)


def encode_event(event_id: bytes, event_type: str, data: bytes) -> bytes:
    """One event as docs/protocol.md lays it out (binary data, no metadata)."""
    type_raw = event_type.encode()
    return EVENT_HEAD.pack(1, 0, len(type_raw), 0) + event_id + type_raw + data


def encode(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return FRAME.pack(len(body)) + body


def address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("esdb://").rpartition(":")
    return host, int(port)


def hello(token: str | None = None) -> bytes:
    return encode(
        {"id": 0, "op": "hello", "version": PROTOCOL_VERSION, "token": token, "client": CLIENT_NAME}
    )


class AppendTemplate:
    """One append request, encoded once; `next()` stamps fresh event ids into it in place."""

    def __init__(
        self, request_id: int, stream: str, batch: int, payload: bytes, prefix: bytes
    ) -> None:
        if len(prefix) != 8:
            raise ValueError("the event id prefix is 8 bytes")
        ids = [prefix + U64.pack(i) for i in range(batch)]
        self.buf = bytearray(
            encode(
                {
                    "id": request_id,
                    "op": "append",
                    "stream": stream,
                    "expected": -2,
                    "events": [encode_event(eid, EVENT_TYPE, payload) for eid in ids],
                }
            )
        )
        # the counter is the id's last 8 bytes
        self.offsets = [self.buf.index(eid) + 8 for eid in ids]
        self.batch = batch

    def next(self, counter: int) -> bytearray:
        """The request with event ids counter .. counter+batch-1 (the caller advances it)."""
        pack_into, buf = U64.pack_into, self.buf
        for k, offset in enumerate(self.offsets):
            pack_into(buf, offset, counter + k)
        return buf


class FrameConn(asyncio.Protocol):
    """A connection that hands each decoded reply map to `on_reply`."""

    def __init__(self, on_reply: Callable[[FrameConn, dict[str, Any]], None]) -> None:
        self.on_reply = on_reply
        self.unpack = msgpack.unpackb
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, size = 0, len(buf)
        with memoryview(buf) as view:
            while size - pos >= 4:
                (length,) = FRAME.unpack_from(view, pos)
                end = pos + 4 + length
                if end > size:
                    break
                self.on_reply(self, self.unpack(view[pos + 4 : end]))
                pos = end
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def write(self, data: bytes | bytearray) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(
    url: str,
    on_reply: Callable[[FrameConn, dict[str, Any]], None],
    *,
    token: str | None = None,
    timeout: float = 5.0,
) -> tuple[FrameConn, dict[str, Any]]:
    """Open a connection, send `hello` and wait for its reply; then route replies to
    `on_reply`. Returns the connection and the hello reply's `ok` map."""
    loop = asyncio.get_running_loop()
    greeted: asyncio.Future[dict[str, Any]] = loop.create_future()

    def first(conn: FrameConn, reply: dict[str, Any]) -> None:
        conn.on_reply = on_reply
        if not greeted.done():
            greeted.set_result(reply)

    host, port = address(url)
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: FrameConn(first), host, port), timeout
    )
    conn.write(hello(token))
    try:
        reply = await asyncio.wait_for(greeted, timeout)
    except TimeoutError:
        conn.close()
        raise
    if "ok" not in reply:
        conn.close()
        raise ConnectionError(f"hello refused by {url}: {reply.get('err')}")
    return conn, reply["ok"]


def find_leader(urls: str, timeout: float = 5.0) -> str:
    """The URL of the node that says it is the leader (asked over `hello`)."""

    async def ask() -> str:
        last = "no node answered"
        for url in urls.split(","):
            try:
                conn, info = await connect(url, lambda c, r: None, timeout=timeout)
            except (OSError, TimeoutError, ConnectionError) as exc:
                last = f"{url}: {exc}"
                continue
            conn.close()
            if info.get("role") == "leader":
                return url
            if info.get("leader_url"):
                return str(info["leader_url"])
            last = f"{url}: role {info.get('role')}, no leader known"
        raise ConnectionError(f"no leader found ({last})")

    return asyncio.run(ask())


# --- appends -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppendSpec:
    url: str  # the leader: like etcd's loader, the load goes to the leader only
    clients: int
    batch: int
    duration: float
    size: int = 100
    processes: int = 2
    conns: int = 4  # per process
    max_ops: int = 2_000_000
    warmup: float = 0.5
    token: str | None = None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _append_worker(
    spec: AppendSpec, slots: int, index: int, start_at: float, run_id: str
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    payload = (os.urandom(spec.size) * 2).hex().encode()[: spec.size]
    prefix = os.urandom(8)
    nconns = max(1, min(spec.conns, slots))
    budget = max(1, spec.max_ops // max(1, spec.processes))
    latencies = array.array("d")
    state = {"errors": 0, "sent": 0, "active": slots, "counter": 1}
    error_codes: dict[str, int] = {}
    sent_at = [0.0] * slots
    window = [0.0, 0.0]  # measured from, until (perf_counter)
    cpu = [0.0, 0.0]
    done: asyncio.Future[None] = loop.create_future()
    templates: list[AppendTemplate] = []
    slot_conn: list[FrameConn] = []
    by_conn: dict[int, list[int]] = {}  # id(conn) -> slot per request id

    def send(slot: int) -> None:
        if state["sent"] >= budget or time.perf_counter() >= window[1]:
            state["active"] -= 1
            if state["active"] == 0 and not done.done():
                done.set_result(None)
            return
        state["sent"] += 1
        counter = state["counter"]
        state["counter"] = counter + spec.batch
        request = templates[slot].next(counter)
        sent_at[slot] = time.perf_counter()
        slot_conn[slot].write(request)

    def on_reply(conn: FrameConn, reply: dict[str, Any]) -> None:
        now = time.perf_counter()
        slot = by_conn[id(conn)][reply["id"]]
        if window[0] <= now <= window[1]:
            if "err" in reply:
                state["errors"] += 1
                code = str(reply["err"][0])
                error_codes[code] = error_codes.get(code, 0) + 1
            else:
                latencies.append(now - sent_at[slot])
        send(slot)

    conns = [(await connect(spec.url, on_reply, token=spec.token))[0] for _ in range(nconns)]
    for k in range(slots):
        conn = conns[k % nconns]
        rids = by_conn.setdefault(id(conn), [-1])  # request id 0 is hello's
        rids.append(k)
        templates.append(
            AppendTemplate(
                len(rids) - 1, f"bench-{run_id}-{index}-{k}", spec.batch, payload, prefix
            )
        )
        slot_conn.append(conn)

    await asyncio.sleep(max(0.0, start_at - time.time()))
    begin = time.perf_counter()
    window[0], window[1] = begin + spec.warmup, begin + spec.warmup + spec.duration

    def mark(i: int) -> None:
        cpu[i] = cpu_seconds()

    loop.call_later(spec.warmup, mark, 0)
    loop.call_later(spec.warmup + spec.duration, mark, 1)
    for k in range(slots):
        send(k)
    lost = [c.lost for c in conns]
    finished, _ = await asyncio.wait(
        [done, *lost],
        timeout=spec.warmup + spec.duration + 60,
        return_when=asyncio.FIRST_COMPLETED,
    )
    closed = done not in finished
    for c in conns:
        c.close()
    if cpu[1] == 0.0:  # the run ended early (connection lost): CPU until now
        cpu[1] = cpu_seconds()
    return {
        "latencies": latencies.tobytes(),
        "errors": state["errors"] + (1 if closed else 0),
        "error_codes": error_codes,
        "cpu_s": cpu[1] - cpu[0],
        "connection_lost": closed,
    }


def _child(target: Callable[..., Any], args: tuple[Any, ...], out: Connection) -> None:
    try:
        result = target(*args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        out.send(result)
    except BaseException as exc:
        out.send({"failed": f"{type(exc).__name__}: {exc}"})
    finally:
        out.close()


def in_processes(
    target: Callable[..., Any], arglists: list[tuple[Any, ...]], timeout: float
) -> list[Any]:
    """Run `target(*args)` (a coroutine function is run with asyncio.run) in one forked
    process per arglist, all at once; their results, in order. A child still running after
    `timeout` is killed (by its pid) and the run fails."""
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for args in arglists:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(target, args, child), daemon=True)
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    results = []
    deadline = time.monotonic() + timeout
    try:
        for pipe in pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"a load process ran past {timeout:g}s")
            results.append(pipe.recv())
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    failed = [r["failed"] for r in results if isinstance(r, dict) and "failed" in r]
    if failed:
        raise RuntimeError(f"load process failed: {failed[0]}")
    return results


def run_append(spec: AppendSpec) -> tuple[Run, dict[str, int]]:
    """One bounded run; the Run plus the error codes seen (code -> count)."""
    nproc = max(1, min(spec.processes, spec.clients))
    shares = [spec.clients // nproc + (1 if i < spec.clients % nproc else 0) for i in range(nproc)]
    run_id = os.urandom(4).hex()
    # every process forks, connects and says hello first; then all start at once
    start_at = time.time() + 0.5 + 0.02 * nproc * spec.conns
    outs = in_processes(
        _append_worker,
        [(spec, share, i, start_at, run_id) for i, share in enumerate(shares)],
        timeout=spec.warmup + spec.duration + 120,
    )
    merged = array.array("d")
    for o in outs:
        merged.frombytes(o["latencies"])
    codes: dict[str, int] = {}
    for o in outs:
        for code, n in o["error_codes"].items():
            codes[code] = codes.get(code, 0) + n
    run = Run.from_latencies(
        merged.tobytes(),
        batch=spec.batch,
        seconds=spec.duration,
        errors=sum(o["errors"] for o in outs),
        cpu_s=sum(o["cpu_s"] for o in outs),
    )
    return run, codes


# --- $all streamed to one client ---------------------------------------------------------------


async def _read_worker(url: str, limit: int, max_s: float, token: str | None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    unpack_head = RECORD_HEAD.unpack_from
    counts = {"events": 0, "bytes": 0}
    errors: list[str] = []

    def on_reply(conn: FrameConn, reply: dict[str, Any]) -> None:
        if "err" in reply:
            errors.append(str(reply["err"][:2]))
        else:
            for record in reply["ok"]:
                # decoded: each record's header unpacked and its data cut out, as a reader
                # of the fixed layout would
                head = unpack_head(record)
                data = record[56 + head[9] + head[10] : len(record) - head[3]]
                counts["bytes"] += len(data)
            counts["events"] += len(reply["ok"])
        if not reply.get("more") and not done.done():
            done.set_result(None)

    conn, _ = await connect(url, on_reply, token=token)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    conn.write(
        encode({"id": 1, "op": "read_all", "from": 0, "limit": limit, "consistency": "local"})
    )
    finished, _ = await asyncio.wait(
        [done, conn.lost], timeout=max_s, return_when=asyncio.FIRST_COMPLETED
    )
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    if done not in finished and not conn.lost.done():
        conn.write(encode({"id": 2, "op": "cancel", "target": 1}))
    conn.close()
    return {
        "events": counts["events"],
        "seconds": elapsed,
        "cpu_s": cpu,
        "error": "; ".join(errors),
        "complete": done in finished,
    }


def run_read_all(url: str, *, limit: int, max_s: float = 60.0, token: str | None = None) -> Run:
    """Stream `$all` from position 0 (at most `limit` events, at most `max_s` seconds) to one
    connection in a separate process, unpacking every record."""
    (out,) = in_processes(_read_worker, [(url, limit, max_s, token)], timeout=max_s + 60)
    if out["error"]:
        raise RuntimeError(f"read_all failed: {out['error']}")
    return Run.streamed(
        events=out["events"],
        seconds=out["seconds"],
        cpu_s=out["cpu_s"],
        errors=0 if out["complete"] else 1,
    )


# --- failover probe ----------------------------------------------------------------------------


async def first_ack(
    urls: list[str], *, deadline_s: float = 30.0, token: str | None = None
) -> float:
    """Append one event through whichever of `urls` accepts it, retrying every few ms until
    one is acknowledged; returns time.perf_counter() at the acknowledgement."""
    loop = asyncio.get_running_loop()
    until = time.perf_counter() + deadline_s
    prefix = os.urandom(8)
    template = AppendTemplate(1, f"failover-{prefix.hex()}", 1, b"x" * 100, prefix)
    counter = 1
    replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
    conns: dict[str, FrameConn] = {}

    def on_reply(conn: FrameConn, reply: dict[str, Any]) -> None:
        fut = replies.get(id(conn))
        if fut is not None and not fut.done():
            fut.set_result(reply)

    k = 0
    try:
        while time.perf_counter() < until:
            url = urls[k % len(urls)]
            k += 1
            try:
                conn = conns.get(url)
                if conn is None or conn.lost.done():
                    conn, info = await connect(url, on_reply, token=token, timeout=0.5)
                    conns[url] = conn
                    leader = info.get("leader_url")
                    if info.get("role") != "leader" and leader in urls and leader != url:
                        k = urls.index(leader)  # go to the leader it names next
                        continue
                fut: asyncio.Future[dict[str, Any]] = loop.create_future()
                replies[id(conn)] = fut
                conn.write(template.next(counter))
                counter += 1
                reply = await asyncio.wait_for(fut, 2.0)
            except (OSError, TimeoutError, ConnectionError):
                dropped = conns.pop(url, None)
                if dropped is not None:
                    dropped.close()
                await asyncio.sleep(0.01)
                continue
            if "ok" in reply:
                return time.perf_counter()
            details = reply["err"][2] if len(reply["err"]) > 2 else {}
            leader = details.get("leader_url") if isinstance(details, dict) else None
            if leader in urls and leader != url:
                k = urls.index(leader)
            else:
                await asyncio.sleep(0.01)
        raise TimeoutError(f"no acknowledged append within {deadline_s:g}s")
    finally:
        for c in conns.values():
            c.close()


# --- as a script -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ap = sub.add_parser("append")
    ap.add_argument("--url", required=True, help="esdb://HOST:PORT[,...] (the leader is found)")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--conns", type=int, default=4, help="connections per process")
    ap.add_argument("--max-ops", type=int, default=2_000_000)
    rp = sub.add_parser("read")
    rp.add_argument("--url", required=True)
    rp.add_argument("--limit", type=int, default=100_000)
    rp.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    leader = find_leader(args.url)
    if args.cmd == "append":
        run, codes = run_append(
            AppendSpec(
                leader,
                clients=args.clients,
                batch=args.batch,
                duration=args.duration,
                size=args.size,
                processes=args.processes,
                conns=args.conns,
                max_ops=args.max_ops,
            )
        )
        print(json.dumps(run.to_json() | {"error_codes": codes}))
    else:
        print(json.dumps(run_read_all(leader, limit=args.limit, max_s=args.max_seconds).to_json()))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
