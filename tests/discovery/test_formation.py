"""Formation decisions as pure functions of a view."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esdb_node.discovery import Bootstrap, Join, Peer, Wait, decide, members_hash
from esdb_node.discovery.formation import bootstrap_members, proposal_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def node(i: int, expect: int = 3, **kw: Any) -> Peer:
    base = Peer(
        node_id=f"n{i}",
        store_id="s1",
        raft_addr=f"10.0.0.{i}:2114",
        client_addr=f"10.0.0.{i}:2113",
        http_addr=None,
        protocol_version=1,
        found_by="mdns",
        last_seen=T0,
        formed=False,
        bootstrap_expect=expect,
    )
    return dataclasses.replace(base, **kw)


def as_self(p: Peer) -> Peer:
    return dataclasses.replace(p, found_by="self")


def settle(nodes: list[Peer], views: dict[int, list[int]], expect: int) -> dict[int, object]:
    """Each node announces the proposal its own view gives; then every node decides
    from its view, seeing the others' announced proposals."""
    by_id = {int(str(p.node_id)[1:]): p for p in nodes}
    announced = {
        i: dataclasses.replace(
            by_id[i], proposal=proposal_for(as_self(by_id[i]), [by_id[j] for j in views[i]], expect)
        )
        for i in by_id
    }
    return {
        i: decide(as_self(announced[i]), [announced[j] for j in views[i] if j != i], expect)
        for i in by_id
    }


def test_every_node_derives_the_same_members_from_the_same_view() -> None:
    nodes = [node(i) for i in (7, 3, 5)]
    ids = [7, 3, 5]
    decisions = settle(nodes, {i: ids for i in ids}, 3)
    assert len(set(decisions.values())) == 1
    d = decisions[3]
    assert isinstance(d, Bootstrap)
    assert d.members == ("10.0.0.3:2114", "10.0.0.5:2114", "10.0.0.7:2114")
    assert d.node_ids == ("n3", "n5", "n7")
    assert d.members_hash == members_hash(reversed(d.members))


def test_input_order_does_not_matter() -> None:
    peers = [
        node(i, proposal=members_hash(f"10.0.0.{j}:2114" for j in (1, 2, 3))) for i in (1, 2, 3)
    ]
    results = {
        decide(as_self(peers[0]), list(perm), 3)
        for perm in itertools.permutations([*peers[1:], peers[0]])
    }
    assert len(results) == 1 and isinstance(results.pop(), Bootstrap)


def test_nodes_started_one_by_one_wait_for_the_nth() -> None:
    arrived: list[int] = []
    for i in (4, 1, 3, 2, 5):
        arrived.append(i)
        decisions = settle([node(j, expect=4) for j in arrived], {j: arrived for j in arrived}, 4)
        if len(arrived) < 4:
            assert all(isinstance(d, Wait) for d in decisions.values()), decisions
            assert all(
                isinstance(d, Wait) and f"{len(arrived)} of 4 expected" in d.reason
                for d in decisions.values()
            )
        else:
            break
    assert sorted(arrived) == [1, 2, 3, 4]
    assert {d for d in decisions.values()} == {
        Bootstrap(
            members=tuple(f"10.0.0.{j}:2114" for j in (1, 2, 3, 4)),
            node_ids=("n1", "n2", "n3", "n4"),
        )
    }


def test_a_node_outside_the_lowest_n_does_not_bootstrap() -> None:
    ids = [1, 2, 3, 4]
    decisions = settle([node(i) for i in ids], {i: ids for i in ids}, 3)
    assert all(isinstance(decisions[i], Bootstrap) for i in (1, 2, 3))
    d4 = decisions[4]
    assert isinstance(d4, Wait) and "joins once they have formed" in d4.reason


def test_no_bootstrap_below_n_even_alone() -> None:
    assert isinstance(decide(as_self(node(1)), [], 3), Wait)
    assert decide(as_self(node(1, expect=1)), [], 1) == Bootstrap(("10.0.0.1:2114",), ("n1",))


def test_without_bootstrap_expect_a_node_only_joins() -> None:
    d = decide(as_self(node(1, expect=0)), [node(2), node(3)], 0)
    assert isinstance(d, Wait) and "bootstrap_expect is not set" in d.reason


def test_a_visible_formed_cluster_means_join_leader_first() -> None:
    formed = [node(i, formed=True, leader="10.0.0.3:2114", members_hash="h") for i in (2, 3, 4)]
    d = decide(as_self(node(1)), [*formed, node(5)], 3)
    assert d == Join(
        targets=("10.0.0.3:2113", "10.0.0.2:2113", "10.0.0.4:2113"), leader="10.0.0.3:2114"
    )


def test_join_even_when_this_node_would_be_in_the_lowest_n() -> None:
    # n1 would be in {n1, n2, n3} but a cluster {n2, n3, n4} already exists: never a 2nd one.
    formed = [
        node(i, formed=True, members_hash=members_hash(f"10.0.0.{j}:2114" for j in (2, 3, 4)))
        for i in (2, 3, 4)
    ]
    assert isinstance(decide(as_self(node(1)), formed, 3), Join)


def test_a_slow_member_of_the_forming_cluster_bootstraps_the_same_list() -> None:
    addrs = tuple(f"10.0.0.{j}:2114" for j in (1, 2, 3))
    h = members_hash(addrs)
    n2 = node(2, formed=True, leader=addrs[1], members_hash=h, proposal=h)
    n3 = node(3, proposal=h)
    assert decide(as_self(node(1, proposal=h)), [n2, n3], 3) == Bootstrap(addrs, ("n1", "n2", "n3"))


def test_disagreeing_proposals_hold_everyone_back() -> None:
    # n4 missed n1: it proposes {2,3,4}; n1..n3 see everyone and propose {1,2,3}.
    views = {1: [1, 2, 3, 4], 2: [1, 2, 3, 4], 3: [1, 2, 3, 4], 4: [2, 3, 4]}
    decisions = settle([node(i) for i in views], views, 3)
    assert isinstance(decisions[4], Wait) and "propose the same members" in decisions[4].reason
    assert all(isinstance(decisions[i], Bootstrap) for i in (1, 2, 3))
    # n2 missed n1 too: now nobody in {1,2,3} has agreement from n2
    views[2] = [2, 3, 4]
    decisions = settle([node(i) for i in views], views, 3)
    assert all(isinstance(d, Wait) for d in decisions.values()), decisions


def test_nodes_with_another_bootstrap_expect_are_not_candidates() -> None:
    d = decide(as_self(node(1)), [node(2), node(3, expect=5), node(4, expect=0)], 3)
    assert isinstance(d, Wait)
    assert "2 of 3 expected" in d.reason and "another bootstrap_expect" in d.reason


def test_static_peers_need_no_announced_agreement() -> None:
    static = [
        dataclasses.replace(
            node(i),
            node_id=None,
            client_addr=None,
            found_by="static",
            bootstrap_expect=None,
            formed=None,
        )
        for i in (2, 3)
    ]
    d = decide(as_self(node(1)), static, 3)
    assert isinstance(d, Bootstrap) and d.node_ids == ("n1", None, None)


def test_other_stores_and_duplicates_are_ignored() -> None:
    other = dataclasses.replace(node(2, expect=2), store_id="s2")
    dup_self = dataclasses.replace(node(1, expect=2), found_by="static")
    me = as_self(node(1, expect=2))
    assert bootstrap_members(me, [other, dup_self, node(3, expect=2)], 2) == (me, node(3, expect=2))


def test_decide_is_only_for_unformed_nodes() -> None:
    with pytest.raises(ValueError):
        decide(as_self(node(1, formed=True)), [], 3)


@given(data=st.data(), expect=st.integers(1, 4))
def test_no_two_different_bootstraps_when_fewer_than_2n_nodes(
    data: st.DataObject, expect: int
) -> None:
    """Safety: whatever partial views nodes have, with fewer than 2N nodes started with
    the same bootstrap_expect N, all Bootstrap decisions name the same member list."""
    count = data.draw(st.integers(expect, 2 * expect - 1))
    ids = data.draw(st.permutations(range(1, 30)))[:count]
    views = {i: sorted({i, *data.draw(st.sets(st.sampled_from(ids)))}) for i in ids}
    decisions = settle([node(i, expect=expect) for i in ids], views, expect)
    boots = {d.members for d in decisions.values() if isinstance(d, Bootstrap)}
    assert len(boots) <= 1
    # and when everybody sees everybody, they all agree
    full = settle([node(i, expect=expect) for i in ids], {i: ids for i in ids}, expect)
    lowest = sorted(ids, key=lambda i: f"10.0.0.{i}:2114")[:expect]
    assert {i for i, d in full.items() if isinstance(d, Bootstrap)} == set(lowest)


def test_random_arrival_orders() -> None:
    rng = random.Random(1234)
    for _ in range(50):
        ids = rng.sample(range(1, 50), 5)
        arrived: list[int] = []
        for i in ids:
            arrived.append(i)
            decisions = settle([node(j) for j in arrived], {j: arrived for j in arrived}, 3)
            boots = [d for d in decisions.values() if isinstance(d, Bootstrap)]
            if len(arrived) < 3:
                assert not boots
            else:
                assert len(boots) == 3 and len(set(boots)) == 1
                break
