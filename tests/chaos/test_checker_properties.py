"""Property tests: model histories are clean; any injected anomaly is found."""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Callable
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from esdb_cli.chaos.checker import AnomalyKind, check, render_text
from esdb_cli.chaos.history import Append, Read, read_history, write_history

from .model import NODES, Drill, generate

K = AnomalyKind
drills = st.builds(
    generate,
    st.randoms(use_true_random=False),
    st.integers(min_value=1, max_value=80),
    n_streams=st.integers(min_value=1, max_value=4),
    n_procs=st.integers(min_value=1, max_value=6),
)


@given(drills)
def test_model_histories_are_clean(drill: Drill) -> None:
    report = check(drill.records())
    assert report.anomalies == (), render_text(report)
    assert report.lost == 0 and report.duplicates == 0
    assert report.unknown_outcomes.torn == 0 and report.unknown_outcomes.unresolved == 0


@given(drills)
def test_model_histories_survive_jsonl(drill: Drill) -> None:
    buffer = io.StringIO()
    write_history(drill.records(), buffer)
    assert list(read_history(io.StringIO(buffer.getvalue()))) == drill.records()


# --- injections: each mutates a clean drill so that it must show one kind of anomaly --------
# Each returns False when the drill has nothing to mutate (then Hypothesis discards it).


def _acks(drill: Drill) -> list[Append]:
    return [op for op in drill.ops if isinstance(op, Append) and op.type == "ok"]


def _filled(drill: Drill) -> list[str]:
    return sorted(s for s, ids in drill.finals.items() if ids)


def _replace(drill: Drill, old: Append | Read, new: Append | Read) -> None:
    drill.ops[drill.ops.index(old)] = new


def _new_append(drill: Drill, stream: str, event: str, t0: int, **fields: Any) -> Append:
    base = Append(drill.next_op(), 9, stream, "n1", t0, t0 + 5, "any", (event,), "info")
    append = dataclasses.replace(base, **fields)
    drill.ops.append(append)
    return append


def lose_acked_write(drill: Drill, rng: random.Random) -> bool:
    acks = _acks(drill)
    if not acks:
        return False
    ack = rng.choice(acks)
    drill.finals[ack.stream] = [e for e in drill.finals[ack.stream] if e not in ack.events]
    return True


def tear_batch(drill: Drill, rng: random.Random) -> bool:
    batches = [
        op
        for op in drill.ops
        if isinstance(op, Append)
        and len(op.events) > 1
        and op.events[-1] in drill.finals[op.stream]
    ]
    if not batches:
        return False
    batch = rng.choice(batches)
    drill.finals[batch.stream].remove(batch.events[-1])
    return True


def diverge(drill: Drill, rng: random.Random) -> bool:
    streams = _filled(drill)
    if not streams:
        return False
    stream = rng.choice(streams)
    drill.node_finals[(stream, rng.choice(NODES))] = drill.final_entries(stream)[:-1]
    return True


def duplicate(drill: Drill, rng: random.Random) -> bool:
    streams = _filled(drill)
    if not streams:
        return False
    stream = rng.choice(streams)
    drill.finals[stream].append(rng.choice(drill.finals[stream]))
    return True


def phantom(drill: Drill, rng: random.Random) -> bool:
    drill.finals[rng.choice(sorted(drill.finals))].append("phantom")
    return True


def show_failed_write(drill: Drill, rng: random.Random) -> bool:
    stream = rng.choice(sorted(drill.finals))
    _new_append(drill, stream, "ghost", drill.max_t() + 10, type="fail", error="unavailable")
    drill.finals[stream].append("ghost")
    return True


def misreport_ack(drill: Drill, rng: random.Random) -> bool:
    acks = _acks(drill)
    if not acks:
        return False
    ack = rng.choice(acks)
    assert ack.first is not None
    _replace(drill, ack, dataclasses.replace(ack, first=ack.first + 1))
    return True


def shift_final_versions(drill: Drill, rng: random.Random) -> bool:
    streams = _filled(drill)
    if not streams:
        return False
    stream = rng.choice(streams)
    for node in NODES:
        drill.node_finals[(stream, node)] = [(v + 1, e) for v, e in drill.final_entries(stream)]
    return True


def dirty_read(drill: Drill, rng: random.Random) -> bool:
    reads = [op for op in drill.ops if isinstance(op, Read) and op.type == "ok"]
    if not reads:
        return False
    read = rng.choice(reads)
    version = read.result[-1][0] + 1 if read.result else read.from_
    _new_append(drill, read.stream, "dirty", read.t0, error="timeout")
    dirty = dataclasses.replace(read, result=(*read.result, (version, "dirty")), limit=None)
    _replace(drill, read, dirty)
    return True


def break_expected(drill: Drill, rng: random.Random) -> bool:
    acks = _acks(drill)
    if not acks:
        return False
    ack = rng.choice(acks)
    assert ack.first is not None
    _replace(drill, ack, dataclasses.replace(ack, expected=ack.first + 3))
    return True


def refuse_in_quiet(drill: Drill, rng: random.Random) -> bool:
    """A conflict on a stream that stood still, or one that contradicts itself."""
    stream = rng.choice(sorted(drill.finals))
    ids = drill.finals[stream]
    acked = {e for a in _acks(drill) for e in a.events}
    later = drill.max_t() + 10
    fields = {"type": "fail", "error": "wrong_expected_version"}
    if not ids:
        _new_append(drill, stream, "refused", later, expected="no-stream", actual=0, **fields)
    elif ids[-1] in acked:
        _new_append(drill, stream, "refused", later, expected=len(ids) - 1, actual=0, **fields)
    else:
        v = rng.randrange(len(ids) + 1)
        _new_append(drill, stream, "refused", later, expected=v, actual=v, **fields)
    return True


def stale_read(drill: Drill, rng: random.Random) -> bool:
    acks = _acks(drill)
    if not acks:
        return False
    stream = rng.choice(acks).stream
    t0 = drill.max_t() + 10
    drill.ops.append(Read(drill.next_op(), 9, stream, "n2", t0, t0 + 5, 0, True, "ok", ()))
    return True


def future_read(drill: Drill, rng: random.Random) -> bool:
    streams = _filled(drill)
    if not streams or min(op.t0 for op in drill.ops) < 2:
        return False
    stream = rng.choice(streams)
    first = ((0, drill.finals[stream][0]),)
    drill.ops.append(Read(drill.next_op(), 9, stream, "n2", 0, 1, 0, False, "ok", first))
    return True


def reorder_in_time(drill: Drill, rng: random.Random) -> bool:
    """Move an acknowledged write to complete before an earlier-placed write was invoked."""
    attempts: dict[tuple[str, ...], int] = {}
    for op in drill.ops:
        if isinstance(op, Append):
            attempts[op.events] = attempts.get(op.events, 0) + 1
    single = [(a.first, a) for a in _acks(drill) if attempts[a.events] == 1 and a.first is not None]
    pairs = [(a, b) for fa, a in single for fb, b in single if a.stream == b.stream and fa < fb]
    if not pairs:
        return False
    a, b = rng.choice(pairs)
    shift = 1000
    drill.ops = [dataclasses.replace(op, t0=op.t0 + shift, t1=op.t1 + shift) for op in drill.ops]
    moved_a = next(op for op in drill.ops if op.op == a.op)
    moved_b = next(op for op in drill.ops if op.op == b.op)
    _replace(drill, moved_b, dataclasses.replace(moved_b, t0=moved_a.t0 - 20, t1=moved_a.t0 - 10))
    return True


INJECTIONS: dict[str, tuple[Callable[[Drill, random.Random], bool], AnomalyKind]] = {
    "lose-acked-write": (lose_acked_write, K.LOST_WRITE),
    "tear-batch": (tear_batch, K.TORN_APPEND),
    "diverge": (diverge, K.DIVERGENCE),
    "shift-final-versions": (shift_final_versions, K.NON_CONTIGUOUS),
    "duplicate": (duplicate, K.DUPLICATE),
    "misreport-ack": (misreport_ack, K.INCONSISTENT_VERSION),
    "phantom": (phantom, K.UNEXPECTED),
    "show-failed-write": (show_failed_write, K.ABORTED_APPEND_VISIBLE),
    "dirty-read": (dirty_read, K.READ_THEN_LOST),
    "break-expected": (break_expected, K.WRONG_FIRST),
    "refuse-in-quiet": (refuse_in_quiet, K.FALSE_CONFLICT),
    "reorder-in-time": (reorder_in_time, K.REALTIME_ORDER),
    "stale-read": (stale_read, K.STALE_READ),
    "future-read": (future_read, K.FUTURE_READ),
}


def test_every_kind_has_an_injection() -> None:
    assert {kind for _, kind in INJECTIONS.values()} == set(AnomalyKind)


@given(drills, st.sampled_from(sorted(INJECTIONS)), st.randoms(use_true_random=False))
def test_injected_anomaly_is_detected(drill: Drill, name: str, rng: random.Random) -> None:
    inject, kind = INJECTIONS[name]
    assume(inject(drill, rng))
    report = check(drill.records())
    assert kind in {a.kind for a in report.anomalies}, render_text(report)
    assert not report.clean
