"""zeroconf glue: the only module of esdb that imports zeroconf.

`MdnsEndpoint` registers one `_esdb._tcp.local.` service, re-publishes its TXT record on
request, browses the same type and hands every TXT record it sees for a service to a
callback (the verification lives in `announce.py`, the bookkeeping in `table.py`).

Zeroconf always gets an explicit list of IPv4 addresses, never `InterfaceChoice.All`.
It runs its own event-loop thread (`use_asyncio=False`), so this works the same whether
or not the caller has an asyncio loop; the browser callbacks run in the browser thread.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence

from zeroconf import (
    IPVersion,
    NonUniqueNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)

from esdb_node.discovery.announce import SERVICE_TYPE
from esdb_node.errors import DiscoveryConflict

_TYPE_TXT = 16  # RFC 1035
_CLASS_IN = 1
RESOLVE_TIMEOUT_MS = 2000

TxtCallback = Callable[[str, list[bytes]], None]


class MdnsEndpoint:
    def __init__(
        self,
        *,
        addresses: Sequence[str],
        instance: str,
        server: str,
        advertise_ip: str,
        port: int,
        on_txt: TxtCallback,
        on_removed: Callable[[str], None],
        logger: logging.Logger,
    ) -> None:
        if not addresses:
            raise ValueError("mDNS needs at least one explicit interface address")
        self._addresses = list(addresses)
        self.instance = instance
        self._server = server
        self._advertise_ip = advertise_ip
        self._port = port
        self._on_txt = on_txt
        self._on_removed = on_removed
        self._log = logger
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None

    def _info(self, properties: dict[str, str]) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            self.instance,
            port=self._port,
            properties=properties,
            server=self._server,
            addresses=[socket.inet_aton(self._advertise_ip)],
        )

    def start(self, properties: dict[str, str]) -> None:
        zc = Zeroconf(interfaces=self._addresses, ip_version=IPVersion.V4Only, use_asyncio=False)
        self._zc = zc
        try:
            zc.register_service(self._info(properties), allow_name_change=False)
        except NonUniqueNameException:
            self.close()
            raise DiscoveryConflict(
                f"another node already announces {self.instance!r} (same node id and store)",
                hint="give every node its own --node-id",
            ) from None
        except BaseException:
            self.close()
            raise
        self._browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change])

    def update(self, properties: dict[str, str]) -> None:
        if self._zc is not None:
            self._zc.update_service(self._info(properties))

    def close(self) -> None:
        """Cancel the browser, send goodbyes, close sockets and zeroconf's thread."""
        browser, zc = self._browser, self._zc
        self._browser = self._zc = None
        if browser is not None:
            browser.cancel()
        if zc is not None:
            zc.close()

    # --- browser thread -----------------------------------------------------------------

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        try:
            if state_change is ServiceStateChange.Removed:
                self._on_removed(name)
                return
            # Every live TXT record of the service: after an update the previous one
            # lingers (marked to expire in 1 s, purged every 10 s); expired ones are skipped
            # and the caller keeps the newest valid one.
            now = current_time_millis()
            texts = [
                r.text
                for r in zeroconf.cache.get_all_by_details(name, _TYPE_TXT, _CLASS_IN)
                if hasattr(r, "text") and not r.is_expired(now)
            ]
            if not texts:
                # Nothing cached yet (e.g. only the PTR arrived): ask, bounded.
                info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
                if info is not None and info.text:
                    texts = [info.text]
            self._on_txt(name, texts)
        except Exception:  # never let one bad record kill the browser thread
            self._log.exception("discovery: error while handling %s", name)
