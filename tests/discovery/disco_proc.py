"""Test program: run one `Discovery` (or a rogue mDNS announcer) in a private namespace.

    disco_proc.py node  --store S --node N --raft H:P --client H:P --secret X [options]
    disco_proc.py rogue --name NAME --addr IP --txt k=v [--txt k=v ...]

`node` prints one JSON object per line on stdout whenever its view, counters or
formation decision change: {"event": "view", "peers": [...], "rejections": {...},
"decision": {...}}. It reads JSON commands on stdin: {"cmd": "state", "formed": true,
"leader": "h:p", "members_hash": "..."}; with --auto-form it marks itself formed as soon
as formation says Bootstrap (what the node will do after bootstrapping Raft).
Logs go to stderr. SIGTERM stops it cleanly (mDNS goodbyes). Both modes refuse to start
outside a private test namespace (tests/netns.py guard).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests/
from tests.netns import guard_current_namespace

MAX_RUNTIME_S = 300.0  # safety net: never outlive a test run


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        out["kind"] = type(obj).__name__
        return out
    if isinstance(obj, tuple | list):
        return [_jsonable(x) for x in obj]
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return obj


def run_node(args: argparse.Namespace, stop: threading.Event) -> int:
    from esdb_node.discovery import Bootstrap, Discovery, DiscoveryConfig

    config = DiscoveryConfig(
        mode=args.mode,
        store_id=args.store,
        node_id=args.node,
        raft_addr=args.raft,
        client_addr=args.client,
        http_addr=args.http,
        secret=args.secret,
        bootstrap_expect=args.expect,
        interfaces=tuple(args.interface),
        peers=tuple(args.peers.split(",")) if args.peers else (),
        dns=args.dns,
        announce_interval=args.announce_interval,
        expire_after=args.expire_after,
        freshness_window=args.window,
    )
    disco = Discovery(config)
    lock = threading.Lock()

    def commands() -> None:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("cmd") == "state":
                disco.set_cluster_state(
                    bool(msg["formed"]), msg.get("leader"), msg.get("members_hash")
                )
            elif msg.get("cmd") == "quit":
                stop.set()
        stop.set()  # stdin closed: the test went away

    disco.start()
    try:
        threading.Thread(target=commands, daemon=True).start()
        last: Any = None
        version = -1
        deadline = time.monotonic() + MAX_RUNTIME_S
        while not stop.is_set() and time.monotonic() < deadline:
            decision: Any = {"kind": "Formed"}
            if not disco.self_peer.formed:
                decision = disco.decide()
                if args.auto_form and isinstance(decision, Bootstrap):
                    disco.set_cluster_state(True, decision.members[0], decision.members_hash)
            view = disco.members_view()
            state = {
                "peers": [
                    {k: v for k, v in _jsonable(p).items() if k != "last_seen"} for p in view.peers
                ],
                "rejections": dict(view.rejections),
                "decision": _jsonable(decision),
                "interfaces": list(view.interfaces),
            }
            if state != last:
                with lock:
                    print(
                        json.dumps(
                            {
                                "event": "view",
                                **state,
                                "last_seen": [p.last_seen.isoformat() for p in view.peers],
                            }
                        ),
                        flush=True,
                    )
                last = state
            version = disco.wait_for_change(version, 0.2)
    finally:
        disco.stop()
    return 0


def run_rogue(args: argparse.Namespace, stop: threading.Event) -> int:
    """A plain zeroconf announcer with whatever TXT it is given (no HMAC logic)."""
    from zeroconf import IPVersion, ServiceInfo, Zeroconf

    type_ = "_esdb._tcp.local."
    props = dict(kv.split("=", 1) for kv in args.txt)
    zc = Zeroconf(interfaces=[args.addr], ip_version=IPVersion.V4Only, use_asyncio=False)

    def info(n: int) -> ServiceInfo:
        return ServiceInfo(
            type_,
            f"{args.name}.{type_}",
            port=4242,
            properties={**props, "n": str(n)},
            server=f"{args.name}.local.",
            addresses=[socket.inet_aton(args.addr)],
        )

    try:
        zc.register_service(info(0))
        print(json.dumps({"event": "registered", "name": args.name}), flush=True)
        deadline = time.monotonic() + MAX_RUNTIME_S
        n = 0
        while not stop.wait(args.interval) and time.monotonic() < deadline:
            n += 1
            zc.update_service(info(n))  # a new TXT each time: a new packet to reject
            print(json.dumps({"event": "updated", "n": n}), flush=True)
    finally:
        zc.close()
    return 0


def main() -> int:
    ifs = guard_current_namespace()
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    node = sub.add_parser("node")
    node.add_argument("--mode", default="mdns")
    node.add_argument("--store", required=True)
    node.add_argument("--node", required=True)
    node.add_argument("--raft", required=True)
    node.add_argument("--client", required=True)
    node.add_argument("--http")
    node.add_argument("--secret")
    node.add_argument("--expect", type=int, default=0)
    node.add_argument("--interface", action="append", default=[])
    node.add_argument("--peers")
    node.add_argument("--dns")
    node.add_argument("--announce-interval", type=float, default=1.0)
    node.add_argument("--expire-after", type=float, default=4.0)
    node.add_argument("--window", type=float, default=120.0)
    node.add_argument("--auto-form", action="store_true")
    rogue = sub.add_parser("rogue")
    rogue.add_argument("--name", required=True)
    rogue.add_argument("--addr", required=True)
    rogue.add_argument("--txt", action="append", default=[])
    rogue.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("esdb").info("interfaces in this namespace: %s", ifs)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return run_node(args, stop) if args.what == "node" else run_rogue(args, stop)


if __name__ == "__main__":
    sys.exit(main())
