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
    help="Kill, pause, partition and heal local nodes; drills that check nothing is lost.",
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
    if not report.majority:
        recovered = (
            f"no majority left ({report.together} of {report.members} members run and reach "
            "each other): no leader can be elected until healed (`esdb chaos heal`)"
        )
    elif report.recovery_s is not None:
        recovered = f"recovered in {report.recovery_s:.2f}s"
    else:
        recovered = "no acknowledged write yet"
    say(f"{report.action} {report.target}: {report.detail}; {recovered}")
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


@app.command()
@client_command
def heal() -> None:
    """Clear partitions, resume paused nodes and start killed ones."""
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
            help="leader-kill, "
            "follower-kill, pause, partition, flapping, rolling-restart, random, "
            "or all.",
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
    from esdb_cli.chaos.drill import SCENARIOS, DrillOptions, run_drill, write_history
    from esdb_cli.chaos.faults import ChaosEnv
    from esdb_cli.localcluster import LocalCluster

    names = list(SCENARIOS) if scenario == "all" else [scenario]
    if any(n not in SCENARIOS for n in names):
        raise InvalidInput(
            f"unknown scenario {scenario!r}", hint="one of " + ", ".join((*SCENARIOS, "all"))
        )
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
