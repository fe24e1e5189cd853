"""NodeConfig: one source of truth for flags, ESDB_* environment variables and a TOML file.

Precedence: command-line flag > environment variable > config file > default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from esdb_node.errors import InvalidInput

DEFAULT_CLIENT_PORT = 2113
DEFAULT_RAFT_PORT = 2114
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_EVENT_BYTES = 4 << 20
URL_SCHEMES = ("esdb://", "esdb+tls://")


def parse_hostport(
    value: str,
    *,
    default_port: int | None = None,
    what: str = "address",
    allow_zero: bool = False,
) -> tuple[str, int]:
    """Parse `host:port`, `[v6]:port`, `esdb://host:port`, `esdb+tls://host:port` (or `host`
    with a default port).

    The one parser for every address esdb reads (flags, URLs, peers, discovery records).
    """
    value = value.strip()
    for scheme in URL_SCHEMES:
        if value.startswith(scheme):
            value = value[len(scheme) :].rstrip("/")
            break
    host, port_text = value, ""
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise InvalidInput(f"{what} {value!r}: missing ']'")
        host, rest = value[1:close], value[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidInput(f"{what} {value!r} is not [HOST]:PORT")
            port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" in value:
        raise InvalidInput(f"{what} {value!r}: write IPv6 addresses as [ADDR]:PORT")
    if not port_text:
        if default_port is None:
            raise InvalidInput(f"{what} {value!r} needs a port (HOST:PORT)")
        port_text = str(default_port)
    lowest = 0 if allow_zero else 1
    if not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise InvalidInput(f"{what} {value!r} has an invalid port")
    if not host or any(ch.isspace() or ch in "/,[]@" for ch in host):
        raise InvalidInput(f"{what} {value!r} has an invalid host")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path = Path("esdb-data")
    node_id: str | None = None
    store_id: str | None = None
    listen: str = f"{DEFAULT_HOST}:{DEFAULT_CLIENT_PORT}"
    raft: str = f"{DEFAULT_HOST}:{DEFAULT_RAFT_PORT}"
    advertise: str | None = None
    peers: tuple[str, ...] = ()
    join: str | None = None
    discovery: str = "static"
    discovery_interface: tuple[str, ...] = ()
    bootstrap_expect: int = 0
    bootstrap_timeout: float = 60.0
    secret: str | None = None
    token: str | None = None  # a token with every scope (also presented to other members)
    tokens_file: Path | None = None  # named, hashed tokens with scopes (esdb_node.tokens)
    tls_cert: Path | None = None  # TLS on the client port: certificate chain (PEM)
    tls_key: Path | None = None  # ... and its private key (PEM)
    tls_ca: Path | None = None  # CA this node trusts when it calls other members over TLS
    durability: str = "fsync"
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_frame_bytes: int = 0  # 0: derived from max_event_bytes
    log_level: str = "info"
    log_format: str = "text"  # text | json (one object per line)
    http: str | None = None  # HOST:PORT of the HTTP API (health, metrics, REST, SSE); off
    # Tuning (TOML keys and ESDB_* variables; tests shorten them). Seconds unless noted.
    election_timeout: float = 1.0  # a follower elects after [t, 2t] without a leader
    leader_fallback_timeout: float = 2.5  # an isolated leader steps down after this
    raft_connection_timeout: float = 10.0  # a silent raft connection is dropped after this
    compaction_entries: int = 100_000  # snapshot + truncate the raft log after N entries
    discovery_interval: float = 30.0  # mdns: re-announce every S
    discovery_expiry: float = 90.0  # mdns: forget a peer not seen for S
    dns_interval: float = 10.0  # dns discovery: re-resolve every S
    max_clock_offset: float = 1.0  # seconds a member's clock may differ from the leader's
    # What one client can cost the node (server/limits.py, raft/transport.py).
    max_connections: int = 0  # client port; 0: 1000, or fewer if descriptors are short
    max_pending_per_host: int = 64  # client connections from one host before hello
    hello_timeout: float = 10.0  # to finish hello (client) or the handshake (raft)
    frame_timeout: float = 30.0  # to finish a frame once started / take a reply
    idle_timeout: float = 600.0  # client connection with nothing in flight
    max_buffered_bytes: int = 0  # frames and replies in memory; 0: max(256 MiB, 4 frames)
    raft_max_connections: int = 64  # incoming raft connections, members included

    @property
    def cluster_mode(self) -> bool:
        return bool(
            self.peers
            or self.join
            or self.bootstrap_expect
            or self.discovery != "static"
            or self.secret
        )

    @property
    def frame_limit(self) -> int:
        return self.max_frame_bytes or max(16 << 20, self.max_event_bytes * 2 + (1 << 20))

    @property
    def buffer_budget(self) -> int:
        return self.max_buffered_bytes or max(256 << 20, 4 * self.frame_limit)

    @property
    def url_scheme(self) -> str:
        return "esdb+tls://" if self.tls_cert else "esdb://"

    def advertised_host(self, bound_host: str) -> str:
        if self.advertise:
            return self.advertise
        if bound_host in ("0.0.0.0", "::", ""):
            raise InvalidInput(
                "listening on all interfaces needs --advertise HOST so peers and clients "
                "know which address to use"
            )
        return bound_host

    def validate(self) -> NodeConfig:
        if self.durability not in ("fsync", "os"):
            raise InvalidInput(f"durability must be fsync or os, not {self.durability!r}")
        if self.discovery not in ("static", "mdns"):
            raise InvalidInput(f"discovery must be static or mdns, not {self.discovery!r}")
        if self.log_format not in ("text", "json"):
            raise InvalidInput(f"log format must be text or json, not {self.log_format!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise InvalidInput(
                f"log level must be debug, info, warning or error, not {self.log_level!r}"
            )
        if self.max_event_bytes < 1024:
            raise InvalidInput("max event size must be at least 1024 bytes")
        if self.max_frame_bytes and self.max_frame_bytes < self.max_event_bytes + 4096:
            raise InvalidInput("max frame size must exceed the max event size")
        if self.bootstrap_expect < 0:
            raise InvalidInput("bootstrap-expect must be >= 0")
        for name in (
            "election_timeout",
            "leader_fallback_timeout",
            "raft_connection_timeout",
            "discovery_interval",
            "discovery_expiry",
            "dns_interval",
            "max_clock_offset",
            "hello_timeout",
            "frame_timeout",
            "idle_timeout",
        ):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"{name} must be > 0 seconds")
        if self.max_connections < 0 or self.max_buffered_bytes < 0:
            raise InvalidInput("max_connections and max_buffered_bytes must be >= 0 (0: auto)")
        if self.max_pending_per_host < 1 or self.raft_max_connections < 2:
            raise InvalidInput("max_pending_per_host must be >= 1, raft_max_connections >= 2")
        if self.max_buffered_bytes and self.max_buffered_bytes < 2 * self.frame_limit:
            raise InvalidInput(
                f"max_buffered_bytes must be at least two frames ({2 * self.frame_limit} bytes)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput("TLS needs both --tls-cert and --tls-key")
        if self.compaction_entries < 2:
            raise InvalidInput("compaction_entries must be at least 2")
        parse_hostport(self.listen, what="--listen", allow_zero=True)
        parse_hostport(self.raft, what="--raft")
        if self.http is not None:
            parse_hostport(self.http, what="--http", allow_zero=True)
        for peer in self.peers:
            parse_hostport(peer, what="peer")
        if self.cluster_mode and not self.secret:
            raise InvalidInput(
                "cluster mode needs a cluster secret",
                hint="pass --secret or set ESDB_SECRET (the same value on every node)",
            )
        if self.secret is not None and len(self.secret) < 8:
            raise InvalidInput("the cluster secret must be at least 8 characters")
        return self

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        config_file: Path | None = None,
    ) -> NodeConfig:
        """Merge the three sources; `flags` holds only options the user actually gave."""
        return cls.resolve(flags, env=env, config_file=config_file)[0]

    @classmethod
    def resolve(
        cls,
        flags: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        config_file: Path | None = None,
    ) -> tuple[NodeConfig, dict[str, str]]:
        """The merged settings and where each came from: `flag`, `env` (an ESDB_* variable),
        `file` (the TOML file) or `default` (`esdb node config --show`)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        if config_file is not None:
            try:
                with config_file.open("rb") as fh:
                    document = tomllib.load(fh)
            except OSError as exc:
                raise InvalidInput(f"cannot read config file {config_file}: {exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise InvalidInput(f"config file {config_file} is not valid TOML: {exc}") from None
            section = document.get("node", document)
            for key, value in section.items():
                values[key.replace("-", "_")] = value
                sources[key.replace("-", "_")] = "file"
        for f in fields(cls):
            env_value = env.get(env_var(f.name))
            if env_value is not None and env_value != "":
                values[f.name] = env_value
                sources[f.name] = "env"
        for key, value in flags.items():
            if value is not None:
                values[key] = value
                sources[key] = "flag"
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise InvalidInput(f"unknown node settings: {', '.join(sorted(unknown))}")
        config = replace(
            cls(), **{k: _coerce(known[k].type, k, v) for k, v in values.items()}
        ).validate()
        return config, {f.name: sources.get(f.name, "default") for f in fields(cls)}


def env_var(setting: str) -> str:
    """The ESDB_* variable of a setting (`data_dir` -> ESDB_DATA_DIR)."""
    return "ESDB_" + setting.upper()


def toml_key(setting: str) -> str:
    """The key of a setting in the TOML file (top level or under `[node]`; `data-dir` is
    accepted too)."""
    return setting


def _coerce(annotation: Any, name: str, value: Any) -> Any:
    kind = str(annotation)
    try:
        if "tuple" in kind:
            if isinstance(value, str):
                return tuple(p.strip() for p in value.split(",") if p.strip())
            return tuple(str(v) for v in value)
        if kind.startswith("Path"):
            return Path(value)
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return None if value is None else str(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid value for {name}: {value!r}") from None
