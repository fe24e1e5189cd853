"""Performance sanity: a drill-sized history (200k ops) checks in seconds, not minutes.

Not a timed assertion (CI boxes vary); the time is printed so a regression is visible.
"""

from __future__ import annotations

import random
import time

import pytest

from esdb_cli.chaos.checker import check

from .model import generate


def test_200k_op_history_checks_in_practical_time(capsys: pytest.CaptureFixture[str]) -> None:
    drill = generate(random.Random(2026), 200_000, n_streams=50, n_procs=16, read_span=5)
    records = drill.records()
    started = time.perf_counter()
    report = check(records)
    elapsed = time.perf_counter() - started
    assert report.clean
    assert report.ops.attempted == 200_000
    assert report.final_events > 100_000
    with capsys.disabled():
        print(
            f"\n[perf] {len(records)} records, {report.ops.attempted} ops checked in {elapsed:.1f}s"
        )
