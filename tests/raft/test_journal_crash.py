"""Crash safety of the segment journal, with real processes killed (SIGKILL) while writing.

Each round starts `tests/raft/journal_child.py` on the same directory, lets it run a random
time, kills it, reopens the journal here and checks it against a model built from what the
child reported as durable: no acknowledged entry, truncation or compaction is lost, no torn
or stale record is accepted (every command is checked against its index and term), the
operation cut in the middle left either its old or its new state (an append: a prefix of
its group), and term and vote never go back. The next round continues from the reopened
state. A kill leaves the page cache, so this checks the write protocol, not the syncs
(those are counted in test_journal.py and test_durability.py)."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from esdb_node.raft.journal import SegmentJournal
from tests.raft.journal_child import content

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 25
ROUND_BUDGET = 60.0  # seconds for all rounds of one mode


@dataclass
class Model:
    first: int = 0
    terms: dict[int, int] = field(default_factory=dict)  # index -> term
    term: int = 0
    vote: str | None = None

    @property
    def last(self) -> int:
        return max(self.terms) if self.terms else 0

    def apply(self, op: list[str]) -> None:
        kind = op[0]
        if kind == "a":
            lo, hi, term = int(op[1]), int(op[2]), int(op[3])
            for i in range(lo, hi + 1):
                self.terms[i] = term
            if not self.first:
                self.first = lo
        elif kind == "t":
            cut = int(op[1])
            self.terms = {i: t for i, t in self.terms.items() if i < cut}
            if not self.terms:
                self.first = 0
        elif kind == "f":
            self.first = int(op[1])
            self.terms = {i: t for i, t in self.terms.items() if i >= self.first}
        elif kind == "v":
            self.term, self.vote = int(op[1]), op[2]

    def copy(self) -> Model:
        return Model(self.first, dict(self.terms), self.term, self.vote)


def _run_child(directory: Path, seed: int, mode: str, kill_after: float, pause: str) -> list[str]:
    """Runs the child and kills it: `kill_after` seconds after it opened the journal, or
    (`pause`, KIND:N) as soon as it says it paused after its N-th operation of KIND."""
    argv = [sys.executable, "-m", "tests.raft.journal_child", str(directory), str(seed), mode]
    proc = subprocess.Popen(
        argv + ([pause] if pause else []),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    opened = threading.Event()
    paused = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())
            opened.set()
            if line.strip() in ("paused", "done"):
                paused.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert opened.wait(30), "the child never opened the journal"
        if pause:
            paused.wait(30)  # (or the child finished without reaching its pause)
        else:
            time.sleep(kill_after)  # the fault itself: a kill at a random moment
        proc.kill()  # by our own child's pid
    finally:
        proc.kill()
        proc.wait(30)
        reader.join(10)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "Traceback" not in err, err
    return lines


def _check(directory: Path, mode: str, model: Model, lines: list[str]) -> Model:
    """The reopened journal against the model; returns the model of what is on disk."""
    assert lines and lines[0].startswith("open"), lines[:3]
    done: list[list[str]] = []
    cut: list[str] | None = None
    for line in lines[1:]:
        words = line.split()
        if words in (["paused"], ["done"]):
            continue
        if words == ["ok"]:
            assert cut is not None
            done.append(cut)
            cut = None
        else:
            cut = words
    for op in done:
        model.apply(op)
    after = model.copy()
    if cut is not None:
        after.apply(cut)

    j = SegmentJournal(directory, fsync=mode == "fsync")
    try:
        entries = [(idx, term, cmd) for cmd, idx, term in j[0:]]
        got_terms = {idx: term for idx, term, _cmd in entries}
        for idx, term, cmd in entries:
            assert cmd == content(idx, term), f"entry {idx} (term {term}) has foreign bytes"
        term, vote = j.getCurrentTerm(), j.getVotedForNodeId()
        first = j.first_index
    finally:
        j._destroy()

    if cut is None or cut[0] == "v":
        assert got_terms == model.terms and first == model.first
    elif cut[0] == "a":
        lo, hi = int(cut[1]), int(cut[2])
        assert {i: t for i, t in got_terms.items() if i < lo} == model.terms
        extra = sorted(i for i in got_terms if i >= lo)
        assert extra == list(range(lo, lo + len(extra))) and (not extra or extra[-1] <= hi)
        assert all(got_terms[i] == int(cut[3]) for i in extra)
    elif cut[0] == "t":
        assert got_terms in (model.terms, after.terms)
    elif cut[0] == "f":
        assert got_terms in (model.terms, after.terms) and first in (model.first, after.first)
    if cut is not None and cut[0] == "v":
        assert (term, vote) in ((model.term, model.vote), (after.term, after.vote))
    else:
        assert (term, vote) == (model.term, model.vote), "term or vote went back"
    return Model(first if got_terms else 0, got_terms, term, vote)


@pytest.mark.parametrize("mode", ["fsync", "os"])
def test_kill_9_while_writing_loses_nothing_acknowledged(tmp_path: Path, mode: str) -> None:
    rng = random.Random(f"journal-crash-{mode}")
    model = Model()
    kills: Counter[str] = Counter()
    end = time.monotonic() + ROUND_BUDGET
    rounds = 0
    while rounds < ROUNDS and time.monotonic() < end:
        # Odd rounds: a kill right after an acknowledged operation of some kind; even rounds:
        # a kill at a random moment, usually in the middle of one.
        pause = f"{rng.choice('atfv')}:{rng.randint(1, 3)}" if rounds % 2 else ""
        seed = rng.randrange(1 << 30)
        lines = _run_child(tmp_path, seed, mode, rng.uniform(0.02, 0.4), pause)
        model = _check(tmp_path, mode, model, lines)
        last = lines[-1].split()[0]
        kills[last if last in ("ok", "paused", "done") else "inside"] += 1
        rounds += 1
    assert rounds >= 10, f"only {rounds} rounds in {ROUND_BUDGET}s"
    assert kills["inside"] >= 3 and kills["paused"] >= 3, kills
    assert model.last > 0
