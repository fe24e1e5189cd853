"""A standalone node whose disk fills: appends fail fast with storage_full (exit 8),
readiness names the disk, the log says so, and writes resume by themselves once space is
back, in the same process, with nothing lost. Root only (a loop-mounted ext4)."""

from __future__ import annotations

import time
from pathlib import Path

from esdb_node.config import NodeConfig
from tests import diskfull
from tests.cli_runner import Esdb
from tests.harness import NodeProc, free_port


def test_full_disk_fails_appends_fast_and_recovers_by_itself(tmp_path: Path, esdb: Esdb) -> None:
    with diskfull.small_disk(tmp_path / "disk", 32) as disk:
        node = NodeProc(disk / "node", NodeConfig(listen=f"127.0.0.1:{free_port()}")).start()
        url = ["--url", node.url]
        for i in range(3):
            assert esdb("append", "s-1", "--type", "T", "--data", f'{{"i": {i}}}', *url).code == 0
        pid = node.pid
        filler = diskfull.fill(disk)
        try:
            big = "x" * 200_000
            started = time.monotonic()
            r = esdb("append", "s-1", "--type", "T", "--data", f'"{big}"', *url, "--timeout", "10")
            took = time.monotonic() - started
            assert r.code == 8, (r.code, r.err)
            assert "is full" in r.err, r.err
            assert took < 5, f"storage_full took {took:.1f}s (should not wait for the deadline)"
            r = esdb("node", "ready", *url)
            assert r.code == 5 and "[-]disk failed: full:" in r.out, (r.out, r.err)
            assert "disk full" in node.log_text()
        finally:
            filler.unlink()
        r = esdb("append", "s-1", "--type", "T", "--data", '{"i": 3}', *url)
        assert r.code == 0, r.err
        assert esdb("node", "ready", *url).code == 0
        r = esdb("read", "s-1", "--json", *url)
        assert [e["data"]["i"] for e in r.json()["events"]] == [0, 1, 2, 3]
        assert node.pid == pid and node.alive()
        assert "disk writable again" in node.log_text()
        node.stop()
