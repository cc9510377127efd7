"""raftctl up: a local cluster in the foreground (3 replicas on loopback)."""
from __future__ import annotations

import os
import signal
import time

import click


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--dir", "directory", default=".raftctl-dev", show_default=True, type=click.Path(file_okay=False),
                  help="Where the cluster keeps its state; a second `up` on it resumes the same cluster.")
    @click.option("--replicas", default=3, show_default=True, type=click.IntRange(1, 7))
    @click.option("--agents", default=3, show_default=True, type=click.IntRange(0, 50),
                  help="Host agents, each a machine with its own fault domain and address 127.0.0.N.")
    @click.option("--runtime", type=click.Choice(["runc", "process", "sim"]), default=None,
                  help="Agents' runtime (default: runc when root and runc exist, else process, which isolates "
                       "nothing).")
    @click.option("--dns-port", default=8600, show_default=True, type=click.IntRange(0, 65535),
                  help="Replica i answers DNS for <service>.service.raftctl on 127.0.0.1:PORT+i (a free port when "
                       "taken; 0: any free port).")
    def up(directory: str, replicas: int, agents: int, runtime: str | None, dns_port: int) -> None:
        """Start a local cluster in the foreground; Ctrl-C stops everything cleanly."""
        from raftctl.agent.runtime import default_runtime
        from raftctl.devcluster import LocalCluster

        cluster = LocalCluster(directory, replicas=replicas, agents=agents, runtime=runtime, dns_port=dns_port)
        if cluster.runtime is None:             # a resumed cluster keeps the runtime it was made with
            cluster.runtime = default_runtime()
        if cluster.runtime == "process":
            click.echo("warning: runtime 'process' (not root, or runc is missing): replicas are plain child "
                       "processes; NOTHING is isolated and images are not used", err=True)
            click.echo("warning: runtime 'process' makes NO network namespaces: network: bridge jobs (the default, "
                       "examples/web.yaml) run on the machine's network with the machine's address and bind their "
                       "allocated port there; nothing keeps one job off another's ports (docs/networking.md)",
                       err=True)
        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        click.echo(f"starting {len(cluster.servers)} control replicas and {len(cluster.agents)} agents "
                   f"({cluster.runtime}) in {cluster.dir} ...")
        try:
            cluster.start(timeout=60)
            if cluster.agents:
                cluster.wait_agents(60)
        except Exception as exc:
            cluster.stop()
            raise click.ClickException(str(exc)) from exc
        leader = cluster.leader()
        env = os.path.join(cluster.dir, "env")
        click.echo(f"cluster up: leader {leader.id if leader else '?'}")
        for p in cluster.servers:
            click.echo(f"  {p.id}  api {p.url}  raft {p.raft}  dns {cluster.host}:{p.dns}  pid {p.pid}  "
                       f"data {p.data_dir}")
        try:  # each agent's own HTTP endpoint (GET /metrics, GET /v1/logs/<placement>), on a port it picked
            machines = {m["id"]: m for m in cluster.get(leader or cluster.servers[0], "/v1/machines",
                                                        timeout=10)["machines"]}
        except Exception:
            machines = {}
        for p in cluster.agents:
            m = machines.get(p.id) or {}
            # runc machines get a container subnet when they register (bridge mode); process/sim ones none
            net = f"  subnet {m['subnet']}" if m.get("subnet") else ""
            click.echo(f"  {p.id}  agent at {p.api}{net}  endpoint {m.get('api') or '?'} (/metrics, /v1/logs)  "
                       f"pid {p.pid}  data {p.data_dir}")
        build = "  raftctl image build examples/web --name web:1 --base host\n"
        click.echo(f"\nin another shell:\n  source {env}\n  raftctl cluster status\n{build}"
                   f"  raftctl job run examples/web.yaml\n  raftctl discover web\n"
                   f"  dig @{cluster.host} -p {cluster.servers[0].dns} web.service.raftctl SRV\n"
                   "  curl http://ADDRESS:PORT/   (an endpoint `discover` prints; published ports answer on "
                   "the machines' 127.0.0.N too)\n\n"
                   "Ctrl-C stops the cluster.")
        try:
            while not stopping:
                for p in cluster.procs:
                    if p.popen and p.popen.poll() is not None:
                        click.echo(f"{p.id} exited with {p.popen.returncode}; restarting it "
                                   f"(log: {p.data_dir}/{p.role}.log)", err=True)
                        cluster.start_proc(p)
                        cluster.write_files()
                time.sleep(0.5)
        finally:
            click.echo("stopping ...")
            cluster.stop()
            left = cluster.network_leftovers()
            if left:                # bridges, namespaces, tables, routes of bridge mode: nothing may stay
                raise click.ClickException("stopped, but this cluster's network objects are still on the host: "
                                           + "; ".join(left))
            click.echo("stopped")
