"""raftctl agent: run the host agent for one machine (or many simulated ones)."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
from typing import TYPE_CHECKING

import click

from raftctl import aio
from raftctl.cli.base import split_servers
from raftctl.cli.output import read_secret
from raftctl.config import config_option
from raftctl.errors import RaftctlError, ValidationError
from raftctl.gcstats import thresholds_from_env, tune
from raftctl.gil import switch_interval_from_env, tune_switch_interval
from raftctl.statemachine.subnets import PoolError, parse_pool

if TYPE_CHECKING:
    from raftctl.agent.config import AgentConfig


UNISOLATED_REFUSED = (
    "refusing to run as root with runtime 'process': every job would run as a plain root process of this "
    "machine, with nothing isolated (no namespaces, no cgroup limits, no seccomp, full access to the agent's "
    "token and to every file). Install runc (apt-get install runc) to get containers, or pass "
    "--allow-unisolated (allow_unisolated = true in the config file) to accept that.")


def check_unisolated(runtime: str, euid: int, allowed: bool) -> None:
    """No silent downgrade: root with the process runtime needs --allow-unisolated."""
    if runtime == "process" and euid == 0 and not allowed:
        raise click.UsageError(UNISOLATED_REFUSED)


def learn_cluster(cfg: AgentConfig) -> str:
    """The cluster id the runc driver names cgroups with: asked of the control plane (assignment answer) and kept in
    the data dir (config.settle_cluster_id). With a kept id, a control plane silent for 5 s does not hold up
    adopting this cluster's containers; a data dir of another cluster is refused."""
    from raftctl.agent.config import read_identity, settle_cluster_id
    from raftctl.agent.control import cluster_identity

    ssl_ctx = None
    if cfg.tls_ca or any(s.startswith("https://") for s in cfg.servers):
        from raftctl.tls import client_context

        ssl_ctx = client_context(cfg.tls_ca)
    try:
        kept = read_identity(cfg.data_dir)
        asked, answered = asyncio.run(cluster_identity(cfg.servers, cfg.token, cfg.machine, ssl=ssl_ctx,
                                                       patience_s=5.0 if kept else None))
        cluster = settle_cluster_id(cfg.data_dir, cfg.machine, answered, asked=asked)
    except RaftctlError as exc:
        raise click.ClickException(str(exc)) from None
    logging.getLogger("raftctl.agent").info("cluster %s%s: cgroups under /raftctl-%s/%s/", cluster,
                                            "" if asked else " (kept; no control replica answered)", cluster,
                                            cfg.machine)
    return cluster


def register(cli: click.Group) -> None:
    @cli.command(global_options=False)
    @config_option
    @click.option("--id", "machine", required=True, help="This machine's id.")
    @click.option("--server", "servers", multiple=True, envvar="RAFTCTL_SERVER", required=True,
                  help="API URL of a control replica (repeat; the agent follows the leader).")
    @click.option("--token", envvar="RAFTCTL_AGENT_TOKEN", default=None,
                  help="An agent token for this machine (or RAFTCTL_AGENT_TOKEN, or --token-file).")
    @click.option("--token-file", type=click.Path(dir_okay=False), default=None,
                  help="File holding the agent token (mode 0600).")
    @click.option("--data-dir", required=True, type=click.Path(file_okay=False))
    @click.option("--fault-domain", "fault_domain", multiple=True, help="region=r,zone=z,rack=k")
    @click.option("--label", "labels", multiple=True, help="k=v (repeat)")
    @click.option("--cpu", default=None, help="CPU to offer, e.g. 2000m (default: every CPU).")
    @click.option("--memory", default=None, help="Memory to offer, e.g. 4Gi (default: 90 % of RAM).")
    @click.option("--pids", default=4096, show_default=True, type=int)
    @click.option("--ports", "port_range", default="20000-32767", show_default=True, help="Host port range for jobs.")
    @click.option("--advertise", default="127.0.0.1", show_default=True, help="Address clients reach containers on.")
    @click.option("--runtime", type=click.Choice(["runc", "process", "sim"]), default=None,
                  help="Default: runc when root and runc exist, else process.")
    @click.option("--subnet-pool", "pool", default="", metavar="CIDR",
                  help="IPv4 network this machine's container /24 is allocated from (runc, bridge mode; default "
                       "10.88.0.0/16). Give every machine of a cluster the same pool, one that no route of the "
                       "network already uses.")
    @click.option("--allow-unisolated", is_flag=True, default=False,
                  help="Let an agent running as root use --runtime process (jobs then run as plain root processes, "
                       "nothing isolated). Refused without it.")
    @click.option("--heartbeat", default="1s", show_default=True)
    @click.option("--count", default=None, type=click.IntRange(1, 5000),
                  help="With --runtime sim: play this many machines from one process (ids ID-0000, ID-0001, ..., "
                       "also for --count 1; the agent token's machine must be 'ID-*'). Without it: one machine, ID.")
    @click.option("--start-spread", default=None,
                  help="With --count: start the machines evenly over this long (e.g. 60s; default: the heartbeat "
                       "interval, or longer so at most 100 start a second). A fleet of many processes started at "
                       "once otherwise registers faster than a control plane can answer.")
    @click.option("--source-address", default=None, metavar="IP",
                  help="With --count: connect to the replicas from this local address (e.g. 127.0.3.1 on "
                       "loopback), so a fleet process has its own range of ephemeral ports.")
    @click.option("--http-port", type=click.IntRange(0, 65535), default=0, show_default=True,
                  help="Port of the agent's own endpoint (logs, metrics) on --advertise; 0: any free port.")
    @click.option("--tls-cert", type=click.Path(dir_okay=False), default=None,
                  help="Serve the agent's endpoint (logs, metrics) over HTTPS with this certificate.")
    @click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="The private key of --tls-cert.")
    @click.option("--tls-ca", envvar="RAFTCTL_CA_CERT", type=click.Path(dir_okay=False), default=None,
                  help="CA that https:// control replicas are verified with (or RAFTCTL_CA_CERT).")
    @click.option("--image-gc-after", default="10m", show_default=True,
                  help="Remove an unpacked image and its blobs once no container on this machine has used it "
                       "for this long (runc); 0: never.")
    @click.option("--disk-reserve", default="10%", show_default=True,
                  help="Free space kept on the filesystem of --data-dir: below it the agent evicts the containers "
                       "that wrote the most to /data and their root (a percentage, or a size like 2Gi; 0: never).")
    @click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
    def agent(machine: str, servers: tuple[str, ...], token: str | None, token_file: str | None, data_dir: str,
              fault_domain: tuple[str, ...], labels: tuple[str, ...], cpu: str | None, memory: str | None,
              pids: int, port_range: str, advertise: str, runtime: str | None, pool: str, allow_unisolated: bool,
              heartbeat: str, count: int | None, start_spread: str | None, source_address: str | None,
              http_port: int, tls_cert: str | None, tls_key: str | None, tls_ca: str | None, image_gc_after: str,
              disk_reserve: str, log_level: str) -> None:
        """Run the host agent: register, heartbeat, run assigned containers, report."""
        from raftctl.agent.config import LEVELS, AgentConfig, default_capacity, parse_pairs, parse_port_range
        from raftctl.agent.diskguard import parse_reserve
        from raftctl.agent.loop import run_agent
        from raftctl.statemachine.units import parse_cpu, parse_duration, parse_size

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from raftctl.agent.runtime import agent_driver, default_runtime

        token = read_secret(token, token_file, "--token-file")
        if not token:
            raise click.UsageError("no agent token: pass --token, --token-file or RAFTCTL_AGENT_TOKEN")
        if bool(tls_cert) != bool(tls_key):
            raise click.UsageError("--tls-cert and --tls-key go together")

        if pool:
            try:
                pool = str(parse_pool(pool))
            except PoolError as exc:
                raise click.BadParameter(str(exc), param_hint="--subnet-pool") from None
        rt = runtime or default_runtime()
        check_unisolated(rt, os.geteuid(), allow_unisolated)
        try:
            loop = aio.event_loop_from_env()   # uvloop unless RAFTCTL_EVENT_LOOP=asyncio (a benchmark's baseline)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if rt == "process":
            logging.getLogger("raftctl.agent").warning(
                "runtime 'process': containers are plain child processes; NOTHING is isolated "
                "(no namespaces, no cgroup limits). Use runc as root for real isolation.")
        default_cpu, default_mem = default_capacity()
        cfg = AgentConfig(
            machine=machine, servers=split_servers(servers), token=token, data_dir=os.path.abspath(data_dir),
            address=advertise, fault_domain=parse_pairs(fault_domain, "--fault-domain", LEVELS),
            labels=parse_pairs(labels, "--label"),
            cpu=parse_cpu(cpu, "--cpu") if cpu else default_cpu,
            memory=parse_size(memory, "--memory") if memory else default_mem,
            pids=pids, ports=parse_port_range(port_range), runtime=rt, pool=pool,
            heartbeat_s=parse_duration(heartbeat, "--heartbeat") / 1000,
            http_port=http_port, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
            image_gc_after_s=parse_duration(image_gc_after, "--image-gc-after") / 1000,
            disk_reserve=parse_reserve(disk_reserve))
        if source_address is not None:
            if count is None:
                raise click.UsageError("--source-address needs --count (the simulated fleet's client)")
            try:
                ipaddress.ip_address(source_address)
            except ValueError:
                raise click.BadParameter(f"{source_address!r} is not an IP address",
                                         param_hint="--source-address") from None
        if count is not None:
            if rt != "sim":
                raise click.UsageError("--count needs --runtime sim")
            if http_port:
                raise click.UsageError("--http-port: with --count each simulated machine takes a free port of its own")
            from raftctl.agent.fleet import run_agents

            spread = parse_duration(start_spread, "--start-spread") / 1000 if start_spread is not None else None
            tune(thresholds_from_env())   # a fleet process holds thousands of machines' loops (raftctl/gcstats.py)
            tune_switch_interval(switch_interval_from_env())   # its loops' waits for the GIL (raftctl/gil.py)
            try:
                aio.run(run_agents(cfg, count, spread_s=spread, source=source_address), loop)
            except ValidationError as exc:   # only the fleet's refusal of the flag is the flag's fault
                if exc.field != "--source-address":
                    raise
                raise click.BadParameter(exc.message, param_hint="--source-address") from None
            sys.exit(0)
        cluster = learn_cluster(cfg) if rt == "runc" else None
        driver = agent_driver(rt, cfg.data_dir, tuple(p for p in (token_file, tls_key, tls_cert) if p),
                              cluster=cluster, machine=machine)
        tune_switch_interval(switch_interval_from_env())   # the loop's waits for the GIL beside runtime calls (gil.py)
        try:
            aio.run(run_agent(cfg, driver), loop)
        finally:
            try:   # stopped with no container left: no route, nft table or bridge of bridge mode stays behind
                driver.release_network()
            except Exception as exc:  # the agent is leaving anyway; say what stays
                logging.getLogger("raftctl.agent").warning("bridge network not released: %s", exc)
            driver.close()
        sys.exit(0)
