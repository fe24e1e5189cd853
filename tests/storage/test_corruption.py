"""Damaged stores: a flipped byte in a record, an index entry or a B-tree branch page is
reported as corrupt_store naming the table and the key or position, by reads and by
`Store.verify`; never as an internal error, never as wrong data."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from esdb_node.codec import U64
from esdb_node.errors import CorruptStore
from esdb_node.model import AllFilter, EventData
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Store

PAGE = 4096
STREAMS = 7


def build(path: Path, batches: int = 40, per_batch: int = 500) -> None:
    store = Store(path)
    for b in range(batches):
        events = [EventData.from_json("T", {"b": b, "i": i}) for i in range(per_batch)]
        store.apply(cmd.encode_batch(1_000 + b, [cmd.append(f"s-{b % STREAMS}", -2, events)]))
    assert store.verify().ok
    store.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "store"
    build(path)
    return path


def damaged(pristine: Path, at: Path, offset: int | list[int], xor: int = 0xFF) -> Path:
    shutil.copytree(pristine, at)
    data = at / "data.mdb"
    raw = bytearray(data.read_bytes())
    for one in [offset] if isinstance(offset, int) else offset:
        raw[one] ^= xor
    data.write_bytes(raw)
    return at


def test_a_flipped_index_entry_is_named(pristine: Path, tmp_path: Path) -> None:
    raw = (pristine / "data.mdb").read_bytes()
    key = b"s-3\x00" + U64.pack(500)  # the stream index's run of s-3's second append
    # every copy of the entry: pages freed by later transactions still hold old ones
    found = [m.end() for m in re.finditer(re.escape(key), raw)]
    assert found
    store = Store(damaged(pristine, tmp_path / "store", found, xor=0x40))
    with pytest.raises(
        CorruptStore, match=r"table sidx, key 's-3'@500: points at position \d+, beyond"
    ):
        store.read_stream("s-3", 490, limit=100)
    report = store.verify()
    assert not report.ok
    assert any("table sidx, key 's-3'@500" in p for p in report.problems), report.problems
    store.close()


def test_an_overlapping_category_run_is_named(pristine: Path, tmp_path: Path) -> None:
    """A category-index run whose count grew (500 -> 1012) would list the next run's records
    twice: filtered reads refuse it, verify names it."""
    raw = (pristine / "data.mdb").read_bytes()
    key = b"s\x00" + U64.pack(500)  # category "s", the second append's run
    found = [m.end() + 2 for m in re.finditer(re.escape(key), raw)]
    assert found
    store = Store(damaged(pristine, tmp_path / "store", found, xor=0x02))
    with pytest.raises(CorruptStore, match=r"table cidx, key 's'@1000: overlaps"):
        store.read_all(0, filter=AllFilter(stream_prefix="s-"), limit=10**6, max_scan=10**6)
    report = store.verify()
    assert any(p.startswith("table cidx, key 's'@1000: overlaps") for p in report.problems)
    assert any("lists 20512 positions; the log holds 20000" in p for p in report.problems)
    store.close()


TRIAL = """
import json, sys
from esdb_node.errors import CorruptStore
from esdb_node.storage.store import Store
out = {{"verify": None, "reads": "ok"}}
try:
    store = Store(sys.argv[1])
except CorruptStore as exc:
    print(json.dumps({{"verify": None, "reads": "corrupt: " + exc.message}})); raise SystemExit
report = store.verify()
out["verify"] = list(report.problems)
try:
    for s in range({streams}):
        payloads, _ = store.read_stream(f"s-{{s}}", 0, limit=10**6)
        from esdb_node.record import record_header
        for p in payloads:
            stream, version = record_header(p)[:2]
            assert stream == f"s-{{s}}", ("wrong event", stream, s)
    position, done = 0, False
    while not done:
        payloads, position, done = store.read_all(position, limit=5000, max_scan=10**6)
except CorruptStore as exc:
    out["reads"] = "corrupt: " + exc.message
print(json.dumps(out))
"""


def branch_pages(path: Path) -> list[int]:
    raw = (path / "data.mdb").read_bytes()
    return [
        pg
        for pg in range(2, len(raw) // PAGE)
        if struct.unpack_from("<H", raw, pg * PAGE + 10)[0] & 1
    ]


def separator_key_offset(raw: bytes, page: int) -> int | None:
    """Offset of the last byte of the second node's key in a branch page (the first node of
    a branch page has an empty key)."""
    base = page * PAGE
    lower = struct.unpack_from("<H", raw, base + 12)[0]
    if (lower - 16) // 2 < 2:
        return None
    node = base + struct.unpack_from("<H", raw, base + 16 + 2)[0]
    ksize = struct.unpack_from("<H", raw, node + 6)[0]
    return node + 8 + ksize - 1 if ksize else None


def test_flipped_branch_pages_are_corrupt_store_or_harmless_never_wrong(
    pristine: Path, tmp_path: Path
) -> None:
    """Each trial damages one separator key of one branch page, in its own process (LMDB
    itself gets no say in how it fails); every read must then either return the right events
    or raise CorruptStore, and verify must notice at least some of the damage."""
    raw = (pristine / "data.mdb").read_bytes()
    pages = [p for p in branch_pages(pristine) if separator_key_offset(raw, p) is not None]
    assert len(pages) >= 5
    noticed = 0
    for page in pages[:12]:
        offset = separator_key_offset(raw, page)
        assert offset is not None
        at = damaged(pristine, tmp_path / f"store-{page}", offset)
        proc = subprocess.run(
            [sys.executable, "-c", TRIAL.format(streams=STREAMS), str(at)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).parents[2],
        )
        assert proc.returncode == 0, f"page {page}: {proc.stderr[-2000:]}"
        verdict = json.loads(proc.stdout)
        assert verdict["reads"] == "ok" or verdict["reads"].startswith("corrupt: corrupt"), verdict
        if verdict["verify"] or verdict["reads"] != "ok":
            noticed += 1
        if verdict["verify"]:
            assert all("table " in p for p in verdict["verify"]), verdict["verify"]
        shutil.rmtree(at)
    assert noticed >= 3, f"only {noticed} of the damaged branch pages were noticed"
