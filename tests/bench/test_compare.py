"""The comparative benchmark: its load generator's frames, and `bench/compare.py --quick`
end to end against a real 3-node cluster with very short cells (a smoke test: it checks the
shape of what is reported and that every figure was measured, not how fast anything is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from bench.loadgen import FRAME, AppendTemplate
from esdb_node import record

ROOT = Path(__file__).resolve().parents[2]


def test_an_append_template_is_one_frame_and_every_event_id_is_new() -> None:
    prefix = b"\x01" * 8
    template = AppendTemplate(7, "s-1", 3, b"d" * 100, prefix)
    seen: set[bytes] = set()
    for counter in (1, 4, 7):
        frame = bytes(template.next(counter))
        (length,) = FRAME.unpack_from(frame, 0)
        assert length == len(frame) - FRAME.size
        message = msgpack.unpackb(frame[FRAME.size :])
        assert message["id"] == 7 and message["op"] == "append"
        assert message["stream"] == "s-1" and message["expected"] == -2
        events = message["events"]
        record.check_events(events)  # what the node checks: a valid encoded event each
        ids = [record.event_id(event) for event in events]
        assert [(record.event_type(e), e[24 + len(b"BenchEvent") :], e[1]) for e in events] == [
            (b"BenchEvent", b"d" * 100, 0)  # no metadata, binary data (is_json flag off)
        ] * 3
        assert all(len(i) == 16 and i.startswith(prefix) for i in ids)
        assert [int.from_bytes(i[8:], "big") for i in ids] == [counter, counter + 1, counter + 2]
        seen.update(ids)
    assert len(seen) == 9


def test_an_unknown_peer_is_refused_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/compare.py", "--peers", "etcd,mongo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown peer 'mongo'" in proc.stderr.strip().splitlines()[-1]
    assert proc.stdout == ""


@pytest.mark.cluster
def test_quick_compare_measures_every_esdb_figure(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, "bench/compare.py", "--quick", "--duration", "0.5", "--warmup", "0.2",
         "--read-max", "5000", "--failovers", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())

    assert doc["machine"]["cores"] >= 1 and doc["machine"]["fsync_per_s"] > 0
    assert len(doc["machine"]["load_avg"]) == 3
    assert doc["config"]["duration_s"] == 0.5 and doc["config"]["runs"] == 1
    assert [s["system"] for s in doc["systems"]] == ["esdb"]  # --quick: esdb alone
    esdb = doc["systems"][0]
    assert esdb["error"] is None and esdb["shape"] == "3 nodes"
    assert [c["name"] for c in esdb["cells"]] == [
        "append b=1 c=1",
        "append b=1 c=64",
        "append b=100 c=1",
    ]
    for cell in esdb["cells"]:
        assert cell["errors"] == 0, cell
        assert cell["ops"] > 0 and cell["events_per_s"] > 0, cell
        assert 0 < cell["p50_ms"] <= cell["p99_ms"], cell
        assert cell["loader_cpu_pct"] is not None and len(cell["runs"]) == 1
    batched = esdb["cells"][2]
    assert batched["events"] == 100 * batched["ops"]
    read = esdb["read_all"]
    assert read["events"] > 0 and read["events_per_s"] > 0 and read["errors"] == 0
    failover = esdb["failover"]
    assert len(failover["times_s"]) == 1 and failover["median_s"] > 0
    assert doc["ratios_esdb_over"] == {}  # no peer in a quick run

    assert "## append, batch 1, 64 client(s)" in proc.stdout
    assert "## failover: leader SIGKILL" in proc.stdout
