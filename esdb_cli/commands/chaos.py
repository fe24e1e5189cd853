"""`esdb chaos ...`: break a local cluster on purpose, and drills that prove nothing is lost."""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from esdb_cli import completion as completions
from esdb_cli.context import client_command, cluster_dir, printer
from esdb_cli.output import say
from esdb_node.errors import InvalidInput, Unhealthy

if TYPE_CHECKING:
    from esdb_cli.chaos.faults import ChaosEnv, Fault

app = typer.Typer(
    help="Kill, pause, partition, slow down, skew and fill local nodes, and heal them; drills "
    "that check nothing is lost.",
    no_args_is_help=True,
)

NodeArg = Annotated[
    str | None,
    typer.Argument(
        help="Node id (see `esdb cluster status`).",
        show_default=False,
        autocompletion=completions.node_ids,
    ),
]
LeaderOpt = Annotated[bool, typer.Option("--leader", help="Target the current leader.")]
RandomOpt = Annotated[bool, typer.Option("--random", help="Target a random node.")]


def _env() -> ChaosEnv:
    from esdb_cli.chaos.faults import ChaosEnv
    from esdb_cli.localcluster import LocalCluster

    directory = cluster_dir()
    if directory is None:
        raise InvalidInput(
            "chaos commands act on a local cluster",
            hint="pass --cluster-dir DIR (made by `esdb cluster up --dir DIR`)",
        )
    return ChaosEnv(LocalCluster.load(directory))


def _spec(node: str | None, leader: bool, random_: bool) -> str:
    chosen = [x for x in (node, "leader" if leader else None, "random" if random_ else None) if x]
    if len(chosen) != 1:
        raise InvalidInput("name exactly one target: NODE, --leader or --random")
    return chosen[0]


def _run(fault: Fault) -> None:
    from esdb_cli.chaos.faults import run_fault

    report = run_fault(_env(), fault)
    say(report.summary)
    printer().record(report.row())


@app.command()
@client_command
def kill(
    node: NodeArg = None,
    leader: LeaderOpt = False,
    random_: RandomOpt = False,
    sig: Annotated[
        str, typer.Option("--signal", help="KILL (crash) or TERM (clean stop).")
    ] = "KILL",
) -> None:
    """Kill a node process (it stays down until `chaos restart` or `chaos heal`)."""
    from esdb_cli.chaos.faults import Kill

    signum = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}.get(sig.upper())
    if signum is None:
        raise InvalidInput("--signal must be KILL or TERM")
    _run(Kill(_spec(node, leader, random_), signum))


@app.command()
@client_command
def pause(node: NodeArg = None, leader: LeaderOpt = False, random_: RandomOpt = False) -> None:
    """Freeze a node (SIGSTOP): it holds its sockets but answers nothing."""
    from esdb_cli.chaos.faults import Pause

    _run(Pause(_spec(node, leader, random_)))


@app.command()
@client_command
def resume(
    node: Annotated[str, typer.Argument(help="Node id.", autocompletion=completions.node_ids)],
) -> None:
    """Unfreeze a paused node (SIGCONT)."""
    from esdb_cli.chaos.faults import Resume

    _run(Resume(node))


@app.command()
@client_command
def restart(node: NodeArg = None, leader: LeaderOpt = False, random_: RandomOpt = False) -> None:
    """Stop (SIGTERM) and start a node, or start it if it is down."""
    from esdb_cli.chaos.faults import Restart

    _run(Restart(_spec(node, leader, random_)))


@app.command()
@client_command
def partition(
    sides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Sides as comma-separated node ids, e.g. `n1,n2 n3`.", show_default=False
        ),
    ] = None,
    isolate: Annotated[
        str | None, typer.Option("--isolate", help="Cut one node (or 'leader') from all others.")
    ] = None,
    one_way: Annotated[
        bool, typer.Option("--one-way", help="Drop only traffic from the first side to the second.")
    ] = False,
) -> None:
    """Stop Raft traffic between sides (in the nodes' transport: no root needed).

    \b
    Examples:
      esdb chaos partition --isolate leader
      esdb chaos partition n1,n2 n3
      esdb chaos partition --one-way n1 n2   # n1 cannot send to n2; n2 still reaches n1
    """
    from esdb_cli.chaos.faults import Partition

    if isolate and sides:
        raise InvalidInput("give either --isolate NODE or sides, not both")
    groups = [[isolate]] if isolate else [s.split(",") for s in (sides or [])]
    if not groups or (not isolate and len(groups) < 2 and not one_way):
        raise InvalidInput("name at least two sides (e.g. `n1,n2 n3`) or use --isolate NODE")
    _run(Partition(groups, one_way=one_way))


@app.command("disk-full")
@client_command
def disk_full(
    node: NodeArg = None,
    leader: LeaderOpt = False,
    random_: RandomOpt = False,
    size: Annotated[
        int, typer.Option("--size", min=16, max=4096, help="MiB of the node's own filesystem.")
    ] = 64,
) -> None:
    """Fill a node's disk (root): later writes on it fail with ENOSPC.

    The first time, the node is stopped, its data directory moved onto a --size MiB ext4
    image loop-mounted at the same path (the image is DIR/disks/NODE.ext4, never more than
    --size MiB of the host's disk) and the node started again. Then a filler file takes every
    free block. `esdb chaos heal` deletes the filler, moves the data back and deletes the
    image; so does `esdb cluster down --purge`.

    Needs root, mkfs.ext4 and loop devices (exit 2 otherwise).
    Example: esdb --cluster-dir c chaos disk-full n2 --size 32
    """
    from esdb_cli.chaos.faults import DiskFull

    _run(DiskFull(_spec(node, leader, random_), size_mib=size))


@app.command("slow-disk")
@client_command
def slow_disk(
    node: NodeArg = None,
    leader: LeaderOpt = False,
    random_: RandomOpt = False,
    delay_ms: Annotated[
        float,
        typer.Option("--delay-ms", min=1, max=10_000, help="Added to every fsync/fdatasync/msync."),
    ] = 100.0,
) -> None:
    """Restart a node on a slow disk: every fsync, fdatasync and msync waits --delay-ms first.

    An LD_PRELOAD shim (esdb_cli/chaos/slowsync.c, built with gcc on first use into
    ~/.cache/esdb/shims). The node keeps it across restarts until `esdb chaos heal`, which
    restarts it without. Needs gcc (exit 2 otherwise).
    Example: esdb --cluster-dir c chaos slow-disk --leader --delay-ms 200
    """
    from esdb_cli.chaos.faults import SlowDisk

    _run(SlowDisk(_spec(node, leader, random_), delay_ms=delay_ms))


@app.command(context_settings={"ignore_unknown_options": True})
@client_command
def clock(
    node: Annotated[
        str, typer.Argument(help="Node id, or leader, follower, random.", show_default=False)
    ],
    offset: Annotated[str, typer.Argument(help="+2h, -30m, +90s, +1d ...", show_default=False)],
) -> None:
    """Restart a node with its wall clock shifted by OFFSET (libfaketime).

    Only the wall clock moves (time.time, event timestamps); monotonic clocks, which Raft's
    timers and every timeout use, stay true. The node keeps the shift across restarts until
    `esdb chaos heal`, which restarts it on the real clock.
    Needs libfaketime (Debian package faketime) and gcc (exit 2 otherwise).
    Examples: esdb --cluster-dir c chaos clock n1 +2h;  esdb --cluster-dir c chaos clock leader -30m
    """
    from esdb_cli.chaos.faults import ClockSkew
    from esdb_cli.chaos.shims import parse_offset

    _run(ClockSkew(node, parse_offset(offset)))


@app.command()
@client_command
def heal() -> None:
    """Undo every fault: clear partitions, resume paused nodes, start killed ones, and
    restart slow-disk, clock and disk-full nodes as they were (data moved back off the
    image, which is deleted)."""
    from esdb_cli.chaos.faults import Heal

    _run(Heal())


@app.command()
@client_command
def drill(
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario",
            "-s",
            help="leader-kill, follower-kill, pause, partition, flapping, rolling-restart, "
            "random, one-way, slow-disk, clock-skew, disk-full (root), or all (every one this "
            "machine can run).",
        ),
    ] = "leader-kill",
    duration: Annotated[float, typer.Option(help="Seconds of load and faults.")] = 30.0,
    clients: Annotated[int, typer.Option(min=1, max=64, help="Concurrent clients.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the fault schedule and workload.")] = 1,
    nodes: Annotated[
        int,
        typer.Option(
            min=3, max=9, help="Nodes of the throwaway cluster (ignored with --cluster-dir)."
        ),
    ] = 3,
    history: Annotated[
        Path | None,
        typer.Option(help="Write the operation history here (JSON Lines)."),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the throwaway cluster running.")
    ] = False,
    test_flag: Annotated[
        list[str] | None,
        typer.Option(
            hidden=True,
            help="Start the throwaway nodes with deliberately broken behaviour (tests).",
        ),
    ] = None,
    netns: Annotated[
        bool,
        typer.Option(
            "--netns",
            help="Run the nodes in network namespaces of their own (root) and partition them "
            "by unplugging them at a virtual switch instead of in their Raft transport.",
        ),
    ] = False,
    netns_inside: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> int:
    """Run a drill and check that no acknowledged event was lost (exit 0 clean, 5 if not).

    Without --cluster-dir it starts a throwaway local cluster and removes it afterwards.
    The --history format is described in docs/history-format.md.
    """
    from esdb_cli.chaos import netns as nx
    from esdb_cli.chaos.checker import render_text, report_to_json
    from esdb_cli.chaos.drill import (
        SCENARIOS,
        DrillOptions,
        run_drill,
        unavailable_reason,
        write_history,
    )
    from esdb_cli.chaos.faults import ChaosEnv
    from esdb_cli.localcluster import LocalCluster

    if scenario != "all" and scenario not in SCENARIOS:
        raise InvalidInput(
            f"unknown scenario {scenario!r}", hint="one of " + ", ".join((*SCENARIOS, "all"))
        )
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    inside = netns or netns_inside is not None
    unable = {n: r for n in names if (r := unavailable_reason(n, netns=inside))}
    if scenario != "all" and unable:
        raise InvalidInput(
            f"scenario {scenario} {unable[scenario]}",
            hint="dev-env/ci-packages.sh installs what the fault scenarios need (as root)",
        )
    if not netns_inside:  # (the drill re-run in the namespaces: its parent said so)
        for name, reason in unable.items():
            say(f"skipping scenario {name}: it {reason}")
    names = [n for n in names if n not in unable]
    directory = cluster_dir()
    if netns and not netns_inside:
        if directory is not None or keep:
            raise InvalidInput(
                "--netns starts (and removes) its own cluster in namespaces",
                hint="drop --cluster-dir and --keep",
            )
        nx.require()
        # Re-run this drill inside the switch namespace, where the workload reaches the nodes.
        argv = ["--output", printer().fmt, "chaos", "drill", "--scenario", scenario]
        argv += [f"--duration={duration}", f"--clients={clients}", f"--seed={seed}"]
        argv += [f"--nodes={nodes}", *(f"--test-flag={flag}" for flag in test_flag or ())]
        argv += [f"--history={history.resolve()}"] if history is not None else []
        return nx.run_in_namespaces(nodes, argv)
    network = None
    hosts: list[tuple[str, str]] = []
    if netns_inside:
        hosts, network = nx.enter(netns_inside, nodes)
    own = directory is None
    if own:
        directory = Path(tempfile.mkdtemp(prefix="esdb-drill-"))
        cluster = LocalCluster.create(
            directory / "cluster",
            nodes=nodes,
            base_port=None,
            secret=None,
            store_id="drill",
            durability="fsync",
            test_flags=test_flag or (),
            hosts=hosts,
        )
        where = f" in network namespaces {netns_inside}-n*" if hosts else ""
        say(f"starting a throwaway {nodes}-node cluster{where} in {cluster.dir}")
    else:
        assert directory is not None
        cluster = LocalCluster.load(directory)
    out = printer()
    dirty = []
    try:
        if own:  # inside the try: nodes started before a failed start are stopped too
            cluster.start()
        for name in names:
            opts = DrillOptions(scenario=name, duration=duration, clients=clients, seed=seed)
            say(f"drill {name}: {duration:g}s, {clients} clients, seed {seed}")
            result = run_drill(ChaosEnv(cluster, network=network), opts, log=say)
            if history is not None:
                path = (
                    history
                    if len(names) == 1
                    else history.with_name(f"{history.stem}-{name}{history.suffix}")
                )
                write_history(result, path)
                say(f"history written to {path}")
            if out.fmt == "table":
                out.stream.write(render_text(result.report) + "\n")
                out.stream.flush()
            else:
                out.record({**report_to_json(result.report), "converge_s": result.converge_s})
            if not result.report.clean:
                dirty.append(name)
    finally:
        if own and not keep:
            cluster.down(purge=True)
            shutil.rmtree(directory, ignore_errors=True)
        elif own:
            say(f"cluster kept in {cluster.dir}")
    if dirty:
        raise Unhealthy(f"drill found anomalies: {', '.join(dirty)}")
    return 0
