"""`Discovery`: the facade the node uses (start/stop, the peer view, cluster state,
formation decisions), whatever the mode: mdns, static or dns."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from esdb_node.config import parse_hostport
from esdb_node.discovery import formation
from esdb_node.discovery.announce import (
    Announcement,
    Rejection,
    decode_txt,
    derive_key,
    service_instance,
    sign,
    verify,
)
from esdb_node.discovery.interfaces import resolve_interfaces
from esdb_node.discovery.model import Peer, check_id, normalize_addr
from esdb_node.discovery.static import (
    parse_dns_target,
    parse_peers,
    resolve_dns,
    static_peers,
)
from esdb_node.discovery.table import PeerTable
from esdb_node.errors import EsdbError, FormationTimeout, InvalidInput

if TYPE_CHECKING:
    from esdb_node.discovery.mdns import MdnsEndpoint

Mode: TypeAlias = Literal["mdns", "static", "dns"]
THREAD_JOIN_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """What discovery needs from NodeConfig. Addresses are the *advertised* ones."""

    mode: Mode
    store_id: str
    node_id: str
    raft_addr: str
    client_addr: str
    http_addr: str | None = None
    secret: str | bytes | None = field(default=None, repr=False)
    protocol_version: int = 1
    bootstrap_expect: int = 0
    interfaces: tuple[str, ...] = ()  # mdns: names or local IPv4s; () = default
    peers: tuple[str, ...] = ()  # static: raft addresses
    dns: str | None = None  # dns: "dns:NAME[:PORT]"
    freshness_window: float = 120.0  # mdns: accepted announcement clock skew, s
    announce_interval: float = 30.0  # mdns: re-announce (fresh timestamp) every s
    expire_after: float = 90.0  # mdns: drop a peer not re-verified for s
    dns_interval: float = 10.0  # dns: re-resolve every s

    def validate(self) -> DiscoveryConfig:
        if self.mode not in ("mdns", "static", "dns"):
            raise InvalidInput(f"discovery mode must be mdns, static or dns, not {self.mode!r}")
        check_id(self.store_id, "store id")
        check_id(self.node_id, "node id")
        for addr, what in (
            (self.raft_addr, "raft address"),
            (self.client_addr, "client address"),
            (self.http_addr, "http address"),
        ):
            if addr is not None and normalize_addr(addr, what=what) != addr:
                raise InvalidInput(f"{what} {addr!r} must be written HOST:PORT")
        if self.bootstrap_expect < 0:
            raise InvalidInput("bootstrap_expect must be >= 0")
        if self.mode == "mdns":
            if not self.secret:
                raise InvalidInput(
                    "mDNS discovery needs the cluster secret",
                    hint="pass --secret or set ESDB_SECRET",
                )
            if not 0 < self.announce_interval < self.freshness_window:
                raise InvalidInput("announce_interval must be > 0 and < freshness_window")
            if self.expire_after <= self.announce_interval:
                raise InvalidInput("expire_after must exceed announce_interval")
        if self.mode == "static":
            parse_peers(self.peers)
        if self.mode == "dns":
            parse_dns_target(self.dns or "")
        return self


@dataclass(frozen=True, slots=True)
class DiscoveryView:
    """Snapshot for `esdb cluster members` and status pages."""

    mode: Mode
    interfaces: tuple[str, ...]  # addresses zeroconf uses (mdns), else ()
    peers: tuple[Peer, ...]  # self included, sorted by raft address
    rejections: tuple[tuple[str, int], ...]  # (reason, count) for every reason


class Discovery:
    """Thread-safe. `start()` once, `stop()` any number of times (also via `with`)."""

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        logger: logging.Logger | None = None,
        resolver: Callable[..., list[Any]] = socket.getaddrinfo,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config.validate()
        self._log = logger or logging.getLogger("esdb.discovery")
        self._resolver = resolver
        self._clock = clock
        self._key = derive_key(config.secret, config.store_id) if config.secret else b""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._endpoint: MdnsEndpoint | None = None  # mdns imported lazily: zeroconf is heavy
        self._interfaces: tuple[str, ...] = ()
        self._announce_lock = threading.Lock()
        self._started = False
        self.table = PeerTable(
            Peer(
                node_id=config.node_id,
                store_id=config.store_id,
                raft_addr=config.raft_addr,
                client_addr=config.client_addr,
                http_addr=config.http_addr,
                protocol_version=config.protocol_version,
                found_by="self",
                last_seen=datetime.fromtimestamp(clock(), UTC),
                formed=False,
                bootstrap_expect=config.bootstrap_expect,
            ),
            expire_after=config.expire_after if config.mode == "mdns" else None,
            logger=self._log,
            clock=clock,
        )

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            raise RuntimeError("Discovery.start() called twice")
        self._started = True
        cfg = self.config
        try:
            if cfg.mode == "static":
                self.table.replace_found_by(
                    "static",
                    static_peers(
                        parse_peers(cfg.peers), store_id=cfg.store_id, now=self.table.now()
                    ),
                )
            elif cfg.mode == "dns":
                self._refresh_dns_logged("")
                self._spawn("esdb-discovery-dns", self._dns_loop)
            else:
                self._start_mdns()
        except BaseException:
            self.stop()
            raise
        self._log.info(
            "discovery: started (%s%s)",
            cfg.mode,
            f" on {', '.join(self._interfaces)}" if self._interfaces else "",
        )

    def _start_mdns(self) -> None:
        from esdb_node.discovery.mdns import MdnsEndpoint

        cfg = self.config
        host, _ = parse_hostport(cfg.raft_addr)
        _, port = parse_hostport(cfg.client_addr)
        self._interfaces = resolve_interfaces(cfg.interfaces, host, resolver=self._resolver)
        advertise_ip = host if host in self._interfaces else self._interfaces[0]
        instance, server = service_instance(cfg.store_id, cfg.node_id)
        endpoint = MdnsEndpoint(
            addresses=self._interfaces,
            instance=instance,
            server=server,
            advertise_ip=advertise_ip,
            port=port,
            on_txt=self.ingest_txt,
            on_removed=self.table.remove,
            logger=self._log,
        )
        endpoint.start(self._signed())
        self._endpoint = endpoint
        self._spawn("esdb-discovery-announce", self._announce_loop)

    def stop(self) -> None:
        """Stop threads, send mDNS goodbyes, close sockets. Idempotent, bounded."""
        self._stop.set()
        self.table.poke()
        for thread in self._threads:
            thread.join(THREAD_JOIN_TIMEOUT)
            if thread.is_alive():
                self._log.warning(
                    "discovery: thread %s did not stop in %.0f s", thread.name, THREAD_JOIN_TIMEOUT
                )
        self._threads.clear()
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            with self._announce_lock:
                endpoint.close()

    def __enter__(self) -> Discovery:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # --- what the node reads ------------------------------------------------------------

    @property
    def self_peer(self) -> Peer:
        return self.table.self_peer

    def peers(self) -> tuple[Peer, ...]:
        """Valid visible nodes including this one, sorted by raft address."""
        return self.table.peers()

    def rejections(self) -> dict[str, int]:
        """Ignored announcements so far, by reason (every reason present, maybe 0)."""
        return self.table.rejection_counts()

    def members_view(self) -> DiscoveryView:
        return DiscoveryView(
            mode=self.config.mode,
            interfaces=self._interfaces,
            peers=self.peers(),
            rejections=tuple(sorted(self.rejections().items())),
        )

    def wait_for_change(self, since: int, timeout: float) -> int:
        """Block until the view changes (version != since) or timeout s; new version."""
        return self.table.wait_for_change(since, timeout)

    # --- what the node writes -----------------------------------------------------------

    def set_cluster_state(
        self, formed: bool, leader: str | None = None, members_hash: str | None = None
    ) -> None:
        """Announce whether this node is in a formed cluster (and its leader's raft
        address, a hash of the member list). Re-announces at once if anything changed."""
        leader = normalize_addr(leader, what="leader") if leader else None
        self.table.update_self(formed=formed, leader=leader, members_hash=members_hash)

    # --- formation ----------------------------------------------------------------------

    def decide(self) -> formation.Decision:
        return formation.decide(self.self_peer, self.peers(), self.config.bootstrap_expect)

    def wait_for_formation(self, timeout: float) -> formation.Bootstrap | formation.Join:
        """Wait (at most `timeout` s) until formation says Bootstrap or Join."""
        deadline = time.monotonic() + timeout
        version = self.table.version
        while True:  # bounded by the deadline
            decision = self.decide()
            if not isinstance(decision, formation.Wait):
                return decision
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                visible = ", ".join(
                    f"{p.node_id or '?'}@{p.raft_addr} ({p.found_by})" for p in self.peers()
                )
                raise FormationTimeout(
                    f"cluster formation did not complete in {timeout:.0f} s: {decision.reason}",
                    hint=f"visible: {visible}. Start the other nodes with the same --store-id, "
                    "--secret and --bootstrap-expect, or check `esdb cluster members` "
                    "and docs/discovery.md#troubleshooting",
                    visible=[p.raft_addr for p in self.peers()],
                    reason=decision.reason,
                )
            version = self.table.wait_for_change(version, min(left, 1.0))

    # --- mdns internals -----------------------------------------------------------------

    def _announcement(self) -> Announcement:
        me = self.table.self_peer
        return Announcement(
            store_id=me.store_id,
            node_id=me.node_id or "",
            protocol_version=self.config.protocol_version,
            raft_addr=me.raft_addr,
            client_addr=me.client_addr or "",
            http_addr=me.http_addr,
            timestamp_ms=int(self._clock() * 1000),
            formed=bool(me.formed),
            leader=me.leader,
            members_hash=me.members_hash,
            bootstrap_expect=self.config.bootstrap_expect,
            proposal=me.proposal,
        )

    def _signed(self) -> dict[str, str]:
        return sign(self._announcement(), self._key)

    def _announce_loop(self) -> None:
        """Re-announce every announce_interval (fresh timestamp) and at once when this
        node's state or formation proposal changes. Bounded by stop; each wait too."""
        interval = self.config.announce_interval
        next_due = time.monotonic() + interval
        version = self.table.version
        announced = self.table.self_peer
        failing = ""
        while not self._stop.is_set():
            me = self.table.self_peer
            if not me.formed:
                proposal = formation.proposal_for(me, self.peers(), self.config.bootstrap_expect)
                self.table.update_self(proposal=proposal)
                me = self.table.self_peer
            if me != announced or time.monotonic() >= next_due:
                try:
                    with self._announce_lock:
                        if self._stop.is_set() or self._endpoint is None:
                            return
                        self._endpoint.update(self._signed())
                    announced = me
                    if failing:
                        self._log.info("discovery: announcing works again")
                    failing = ""
                except Exception as exc:  # keep trying; e.g. the link may come back
                    if repr(exc) != failing:  # log each new kind of failure once
                        self._log.warning("discovery: re-announcement failed: %r", exc)
                    failing = repr(exc)
                next_due = time.monotonic() + interval
            version = self.table.wait_for_change(version, max(0.0, next_due - time.monotonic()))

    def ingest_txt(self, name: str, texts: list[bytes]) -> None:
        """Handle the TXT records seen for mDNS service `name` (called by the browser
        thread; public for tests): keep the newest valid one, else count one rejection."""
        now_ms = int(self._clock() * 1000)
        best: Announcement | None = None
        rejection: Rejection | None = None
        for raw in texts:
            props = decode_txt(raw)
            if props is None:
                result: Announcement | Rejection = Rejection("malformed", "unparseable TXT data")
            else:
                result = verify(
                    props,
                    key=self._key,
                    store_id=self.config.store_id,
                    now_ms=now_ms,
                    window_s=self.config.freshness_window,
                )
            if isinstance(result, Announcement):
                if best is None or result.timestamp_ms > best.timestamp_ms:
                    best = result
            elif rejection is None:
                rejection = result
        if best is not None:
            self.table.accept(name, best)
        elif rejection is not None:
            self.table.reject(name, rejection)
        else:
            self.table.reject(name, Rejection("malformed", "service has no TXT record"))

    # --- dns internals ------------------------------------------------------------------

    def _refresh_dns(self) -> None:
        target = parse_dns_target(self.config.dns or "")
        peers = resolve_dns(
            target, store_id=self.config.store_id, now=self.table.now(), resolver=self._resolver
        )
        self.table.replace_found_by("dns", peers)

    def _refresh_dns_logged(self, last_error: str) -> str:
        """Refresh; on failure keep the last good list and log each new error once."""
        try:
            self._refresh_dns()
        except EsdbError as exc:
            if str(exc) != last_error:
                self._log.warning(
                    "discovery: %s (keeping the previous peer list, retrying every %.0f s)",
                    exc,
                    self.config.dns_interval,
                )
            return str(exc)
        return ""

    def _dns_loop(self) -> None:
        last_error = ""
        while not self._stop.wait(self.config.dns_interval):
            last_error = self._refresh_dns_logged(last_error)
