"""ByteBudget: the client port's shared allowance for large frames and replies (pure logic)."""

from __future__ import annotations

import asyncio
import logging

from esdb_node.server.limits import ByteBudget, RateLimitedLog


async def _scenario() -> list[str]:
    budget = ByteBudget(100)
    order: list[str] = []
    assert await budget.acquire(60) == 60
    budget.release(60)
    assert await budget.acquire(500) == 100  # never more than the whole budget
    budget.release(40)  # 60 left in use

    async def want(name: str, n: int) -> None:
        got = await budget.acquire(n)
        order.append(f"{name}:{got}")

    big = asyncio.create_task(want("big", 80))  # waits: 60 used
    await asyncio.sleep(0)
    small = asyncio.create_task(want("small", 10))  # FIFO: waits behind big
    cancelled = asyncio.create_task(want("cancelled", 30))
    await asyncio.sleep(0)
    assert order == [] and budget.used == 60
    cancelled.cancel()
    await asyncio.sleep(0)
    budget.release(60)  # big (80) fits, then small (10)
    await asyncio.gather(big, small)
    order.append(f"used:{budget.used}")
    budget.release(90)
    order.append(f"end:{budget.used}")
    return order


def test_fifo_clamped_and_cancellable() -> None:
    assert asyncio.run(_scenario()) == ["big:80", "small:10", "used:90", "end:0"]


def test_rate_limited_log_counts_what_it_skipped() -> None:
    logger = logging.getLogger("esdb.test.ratelimit")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger.addHandler(Keep())
    log = RateLimitedLog(logger, interval=3600)
    for i in range(1000):
        log.warning("flood", "refused %d", i)
    assert lines == ["refused 0"]
    log._last["flood"] -= 7200  # an hour later
    log.warning("flood", "refused %d", 1000)
    assert lines[-1] == "refused 1000 (999 more since the last such line)"
