"""Client library: `AsyncClient` (asyncio) and `Client` (blocking), with typed results.

See `esdb_node.client.aio` for the behaviour (redirects, failover, unknown outcomes).
"""

from esdb_node.client.aio import DEFAULT_URL, AsyncClient, Waiting
from esdb_node.client.blocking import BlockingIterator
from esdb_node.client.connection import format_url, parse_urls
from esdb_node.client.sync import Client
from esdb_node.model import EventData


def json_event(event_type: str, data: object, metadata: object = None) -> EventData:
    """Convenience for scripts: `client.append("order-1", json_event("Placed", {...}))`."""
    return EventData.from_json(event_type, data, metadata)


__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "BlockingIterator",
    "Client",
    "Waiting",
    "format_url",
    "json_event",
    "parse_urls",
]
