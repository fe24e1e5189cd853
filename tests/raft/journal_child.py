"""A journal writer for the crash tests:

    python -m tests.raft.journal_child DIR SEED fsync|os [KIND:N]

Opens the journal at DIR, then runs random operations (append groups, truncate a tail,
compact, change term and vote) until it is killed (or MAX_OPS / MAX_SECONDS). Before each
operation it prints what it is about to do, and "ok" once the operation is durable
(`flush()` or the synchronous write returned), so the killer knows which operations finished
and which one may have been cut in the middle. With KIND:N it prints "paused" after the N-th
operation of that kind (a, t, f or v) and waits to be killed: a kill right after an
acknowledgement. Every command is `content(index, term)`, so a reader can check any entry on
its own."""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

from esdb_node.raft.journal import SegmentJournal

MAX_OPS = 5000
MAX_SECONDS = 5.0
SIZES = (10, 100, 1000, 8000)


def content(index: int, term: int) -> bytes:
    digest = hashlib.sha256(b"%d/%d" % (index, term)).digest()
    size = SIZES[digest[0] % len(SIZES)]
    return (digest * (size // len(digest) + 1))[:size]


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def main(directory: str, seed: int, mode: str, pause: str = "") -> None:
    rng = random.Random(seed)
    pause_kind, _, pause_n = pause.partition(":")
    seen: dict[str, int] = {}
    j = SegmentJournal(Path(directory), fsync=mode == "fsync", segment_bytes=2 << 20)
    term = max(j.getCurrentTerm(), j[-1][2] if len(j) else 0)
    say("open", j.first_index, j.last_index, term)
    stop_at = time.monotonic() + MAX_SECONDS
    for k in range(MAX_OPS):
        if time.monotonic() > stop_at:
            break
        r = rng.random()
        n = len(j)
        if r < 0.08 and n > 10:
            kind = "t"
            cut = j.first_index + rng.randint(max(1, n - 60), n - 1)
            say("t", cut)
            j.deleteEntriesFrom(cut - j.first_index)
            term += 1  # what follows a truncation comes from a newer leader
        elif r < 0.12 and n > 200:
            kind = "f"
            first = j.first_index + rng.randint(1, n - 100)
            say("f", first)
            j.deleteEntriesTo(first - j.first_index)
        elif r < 0.16:
            kind = "v"
            term += 1
            vote = f"127.0.0.1:{k}"
            say("v", term, vote)
            j.setCurrentTerm(term, vote)
        else:
            kind = "a"
            lo = j.last_index + 1
            hi = lo + rng.randint(1, 50) - 1
            say("a", lo, hi, term)
            for i in range(lo, hi + 1):
                j.add(content(i, term), i, term)
            assert j.flush()
        say("ok")
        seen[kind] = seen.get(kind, 0) + 1
        if kind == pause_kind and seen[kind] == int(pause_n):
            say("paused")
            time.sleep(120)  # until killed
    j._destroy()
    say("done")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:5])
