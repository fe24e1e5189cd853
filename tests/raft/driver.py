"""A Store + RaftNode in one process, driven by JSON lines on stdin (tests only).

The raft layer without the client server, so tests reach RaftNode's own API (outcomes,
partitions, membership, compaction) in a real process. Usage:
    python driver.py '{"self_addr": "127.0.0.1:7001", "peers": [...], "data_dir": "...",
                       "secret": "...", ...RaftConfig overrides}'
Requests: {"id": 1, "op": "status" | "append" | "read" | "partition" | "add_member" |
"remove_member" | "transfer" | "compact" | "exit", ...}. Replies carry the same id; while an
append with "stream_acks" runs, lines {"ack": [event ids]} arrive as acknowledgements come in.
Env ESDB_TEST_FAIL_APPLY_AFTER=N makes the store's N+1th apply raise StorageFailure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from esdb_node.codec import record_header
from esdb_node.deadline import Deadline
from esdb_node.errors import EsdbError, StorageFailure
from esdb_node.raft import Applied, RaftConfig, RaftNode, Rejected
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Store

_out_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    line = json.dumps(obj, default=str)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class FailingStore(Store):
    def __init__(self, *args: Any, fail_after: int, **kwargs: Any) -> None:
        self.fail_after = fail_after
        super().__init__(*args, **kwargs)

    def apply(self, batch: bytes, index: int = 0, term: int = 0) -> Any:
        if index > self.applied[0] and self.fail_after <= 0:
            raise StorageFailure("injected: No space left on device")
        self.fail_after -= 1
        return super().apply(batch, index, term)


def append_load(node: RaftNode, req: dict[str, Any]) -> dict[str, Any]:
    """Submit `count` batches of `events` events of `size` bytes, `inflight` at a time."""
    count, per_batch, size = req["count"], req.get("events", 1), req.get("size", 100)
    inflight, timeout = req.get("inflight", 1), req.get("timeout", 5.0)
    stream, stream_acks = req.get("stream", "s-1"), req.get("stream_acks", False)
    max_s = req.get("max_seconds", 60.0)
    payload = os.urandom(min(size, 1 << 16))
    payload = (payload * (size // len(payload) + 1))[:size]
    sem = threading.Semaphore(inflight)
    lock = threading.Lock()
    acked: list[str] = []
    counts = {"applied": 0, "rejected": 0, "unknown": 0, "failed": 0}
    all_done = threading.Semaphore(0)

    def one(ids: list[bytes]) -> None:
        batch = cmd.encode_batch(
            time.time_ns() // 1000,
            [cmd.append(stream, -2, [[i, "T", payload, b"", False] for i in ids])],
        )

        def cb(outcome: Any) -> None:
            with lock:
                if isinstance(outcome, Applied):
                    res = outcome.results[0]
                    if isinstance(res, EsdbError):
                        counts["failed"] += 1
                    else:
                        counts["applied"] += 1
                        hexes = [i.hex() for i in ids]
                        acked.extend(hexes)
                        if stream_acks:
                            emit({"ack": hexes})
                elif isinstance(outcome, Rejected):
                    counts["rejected"] += 1
                else:
                    counts["unknown"] += 1
            sem.release()
            all_done.release()

        node.submit(batch, cb, Deadline.after(timeout))

    end = time.monotonic() + max_s
    sent = 0
    for _ in range(count):
        if time.monotonic() > end or not sem.acquire(timeout=max(0.0, end - time.monotonic())):
            break
        one([uuid.uuid4().bytes for _ in range(per_batch)])
        sent += 1
    for _ in range(sent):
        all_done.acquire(timeout=timeout + 5)
    with lock:
        return {"sent": sent, **counts, "acked": [] if req.get("quiet") else list(acked)}


def read_ids(store: Store, stream: str) -> list[str]:
    ids: list[str] = []
    version = 0
    while True:
        try:
            payloads, _ = store.read_stream(stream, version, limit=1000)
        except EsdbError:
            return ids
        if not payloads:
            return ids
        ids.extend(record_header(p)[4].hex() for p in payloads)
        version += len(payloads)


def membership(node: RaftNode, req: dict[str, Any]) -> None:
    try:
        op, timeout = req["op"], req.get("timeout", 10.0)
        if op == "add_member":
            node.add_member(req["addr"], timeout)
        elif op == "remove_member":
            node.remove_member(req["addr"], timeout)
        else:
            node.transfer_leadership(req.get("to"), timeout)
        emit({"id": req["id"], "ok": True})
    except Exception as exc:
        emit({"id": req["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"})


def main() -> None:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    fields = {f.name for f in dataclasses.fields(RaftConfig)}
    config = RaftConfig(
        **{k: v for k, v in spec.items() if k in fields and k not in ("peers", "data_dir")},
        peers=tuple(spec.get("peers", ())),
        data_dir=Path(spec["data_dir"]),
    )
    fail_after = os.environ.get("ESDB_TEST_FAIL_APPLY_AFTER")
    store_path = Path(spec["data_dir"]) / "store"
    store: Store = (
        FailingStore(store_path, sync=False, fail_after=int(fail_after))
        if fail_after
        else Store(store_path, sync=False)
    )
    node = RaftNode(config, store)
    emit({"event": "started", "pid": os.getpid()})
    for line in sys.stdin:
        req = json.loads(line)
        rid, op = req.get("id"), req.get("op")
        try:
            if op == "status":
                result: Any = dataclasses.asdict(node.status())
                result["replays_skipped"] = node.replays_skipped
                result["store_applied"] = list(store.applied)
                result["last_position"] = store.last_position
                result["snapshot_installs"] = node.snapshots.installs
                result["snapshot_dumps"] = node.snapshots.dumps
                result["snapshot_transfers"] = node._obj.esdb_snapshot_transfers
                result["members_list"] = list(node.members())
            elif op == "append":  # in the background: the node must keep answering status
                threading.Thread(
                    target=lambda r=req: emit({"id": r["id"], "ok": True, **append_load(node, r)}),
                    daemon=True,
                ).start()
                continue
            elif op == "read":
                result = {"ids": read_ids(store, req.get("stream", "s-1"))}
            elif op == "partition":
                node.set_partition(req.get("drop_in", ()), req.get("drop_out", ()))
                result = {}
            elif op in ("add_member", "remove_member", "transfer"):
                # Blocking calls run beside the command loop, which keeps answering status.
                threading.Thread(target=membership, args=(node, req), daemon=True).start()
                continue
            elif op == "compact":
                node.compact()
                result = {}
            elif op == "exit":
                node.destroy()
                store.close()
                emit({"id": rid, "ok": True})
                return
            else:
                raise ValueError(f"unknown op {op!r}")
            emit({"id": rid, "ok": True, **result})
        except Exception as exc:
            emit({"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
