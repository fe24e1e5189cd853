"""Which IPv4 addresses mDNS may use (`--discovery-interface`).

Everything is read from the *current* network namespace: `socket.if_nameindex()` and
getifaddrs(3) (via ifaddr, zeroconf's own dependency), both netlink-backed. Never
`/sys/class/net`, which under a plain `unshare -n` still shows the host's interfaces.

Default (no `--discovery-interface`): the interface that carries the advertised address,
and only that one. Never "all interfaces": a forgotten default must not announce the
cluster on every network the machine is attached to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

import ifaddr

from esdb_node.errors import InvalidInput

_WILDCARDS = {"all", "*", "any", "0.0.0.0", "::", "default"}


def local_ipv4_by_interface() -> dict[str, tuple[str, ...]]:
    """Interface name -> its IPv4 addresses, in this network namespace."""
    names = {name for _, name in socket.if_nameindex()}
    out: dict[str, list[str]] = {name: [] for name in names}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and adapter.name in out:
                out[adapter.name].append(ip.ip)
    return {name: tuple(addrs) for name, addrs in out.items()}


def _describe(table: dict[str, tuple[str, ...]]) -> str:
    return (
        ", ".join(
            f"{name} ({', '.join(addrs) or 'no IPv4'})" for name, addrs in sorted(table.items())
        )
        or "none"
    )


def _ipv4_of(host: str, resolver: Callable[..., list[Any]]) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        infos = resolver(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidInput(
            f"cannot resolve the advertised host {host!r}: {exc}",
            hint="pass --discovery-interface NAME",
        ) from None
    if not infos:
        raise InvalidInput(f"the advertised host {host!r} has no IPv4 address")
    return str(infos[0][4][0])


def resolve_interfaces(
    specs: Sequence[str],
    advertise_host: str,
    *,
    table: dict[str, tuple[str, ...]] | None = None,
    resolver: Callable[..., list[Any]] = socket.getaddrinfo,
) -> tuple[str, ...]:
    """IPv4 addresses to hand to `Zeroconf(interfaces=...)`.

    `specs`: interface names ("eth0") or local IPv4 addresses ("10.0.0.5"); empty means
    the interface carrying `advertise_host`. Wildcards ("all", "0.0.0.0") are refused.
    """
    table = local_ipv4_by_interface() if table is None else table
    local = {addr for addrs in table.values() for addr in addrs}
    if not specs:
        if advertise_host.strip().lower() in _WILDCARDS:
            raise InvalidInput(
                f"cannot pick a discovery interface for the wildcard address {advertise_host!r}",
                hint="pass --advertise HOST or --discovery-interface NAME",
            )
        addr = _ipv4_of(advertise_host, resolver)
        if addr not in local:
            raise InvalidInput(
                f"the advertised address {addr} is not on any interface of this host",
                hint=f"pass --discovery-interface NAME; interfaces here: {_describe(table)}",
            )
        return (addr,)
    out: list[str] = []
    for spec in specs:
        text = spec.strip()
        if text.lower() in _WILDCARDS:
            raise InvalidInput(
                f"--discovery-interface {text!r}: name interfaces explicitly",
                hint="discovery never announces on all interfaces",
            )
        try:
            literal: str | None = str(ipaddress.IPv4Address(text))
        except ipaddress.AddressValueError:
            literal = None
        if literal is not None:
            if literal not in local:
                raise InvalidInput(
                    f"--discovery-interface {text}: no interface here has this address",
                    hint=f"interfaces here: {_describe(table)}",
                )
            addrs: tuple[str, ...] = (literal,)
        elif text not in table:
            raise InvalidInput(
                f"--discovery-interface {text!r}: no such interface",
                hint=f"interfaces here: {_describe(table)}",
            )
        else:
            addrs = table[text]
            if not addrs:
                raise InvalidInput(
                    f"--discovery-interface {text!r} has no IPv4 address",
                    hint="discovery uses IPv4 multicast (224.0.0.251)",
                )
        out.extend(a for a in addrs if a not in out)
    return tuple(out)
