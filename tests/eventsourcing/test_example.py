"""docs/eventsourcing.md's complete example (docs/examples/bank.py), run as a user runs it:
a separate process configured only by PERSISTENCE_MODULE and ESDB_URL, twice against one
node. The second run must find the projection's tracking record and process only the new
deposits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import NodeProc

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "bank.py"


def run_example(url: str) -> str:
    env = dict(os.environ, PERSISTENCE_MODULE="esdb_node.eventsourcing", ESDB_URL=url)
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_documented_example_runs_and_resumes_from_its_tracking_record(
    node: NodeProc,
) -> None:
    first = run_example(node.url)
    second = run_example(node.url)
    for out in (first, second):
        assert "balance 65.00" in out
        assert "tally: 3 deposits, 65.00 in total" in out
    with node.client() as client:
        tracked = [e.json()["notification_id"] for e in client.read_stream("Tallies.tracking-Bank")]
        deposits = [
            e.position + 1
            for e in client.read_all()
            if e.stream.startswith("Bank-") and e.type.endswith(":Account.Deposited")
        ]
        snapshots = [s.stream for s in client.streams("Bank.snapshots-")]
    assert tracked == deposits  # each deposit processed once, in order, over both runs
    assert len(tracked) == 6
    assert len(snapshots) == 2  # snapshotting_intervals = {Account: 2}: one per account


def test_the_docs_show_the_example_as_it_is() -> None:
    doc = (EXAMPLE.parents[1] / "eventsourcing.md").read_text()
    shown = doc.split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"
    assert shown == EXAMPLE.read_text()
