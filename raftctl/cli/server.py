"""raftctl server: run one control replica."""
from __future__ import annotations

import logging
import os
from typing import Callable

import click

from raftctl import aio
from raftctl.cli.output import fail, read_secret
from raftctl.errors import ValidationError
from raftctl.config import config_option


def _seconds(parse: Callable[[str], int], value: str, flag: str, error: type[ValidationError]) -> float:
    try:
        return parse(value) / 1000
    except error as exc:
        fail(f"{flag}: {exc.message}")
        raise


def _body_limit(value: str) -> int:
    from raftctl.statemachine.units import parse_size

    try:
        limit = parse_size(value)
    except ValidationError as exc:
        fail(f"--max-body: {exc.message}")
        raise
    if limit < 1024:
        fail(f"--max-body: {value!r} is below 1Ki; job specs alone need more")
    return limit


def register(cli: click.Group) -> None:
    @cli.command(global_options=False)
    @config_option
    @click.option("--id", "node_id", required=True, help="This replica's name, e.g. n1.")
    @click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Journal, snapshots, tokens.")
    @click.option("--raft", "raft_addr", required=True, help="host:port for Raft traffic (never 0.0.0.0 by default).")
    @click.option("--peer", "peers", multiple=True, help="Raft host:port of another replica (repeat).")
    @click.option("--api", "api_addr", required=True, help="host:port for the HTTP API.")
    @click.option("--advertise-api", default=None, help="host:port others use to reach the API, if different.")
    @click.option("--secret", envvar="RAFTCTL_SECRET", default=None, help="Cluster secret (or RAFTCTL_SECRET).")
    @click.option("--secret-file", type=click.Path(dir_okay=False), default=None, help="File holding the cluster secret.")
    @click.option("--insecure-dev", is_flag=True, help="Run Raft unencrypted and unauthenticated (never in production).")
    @click.option("--dns-port", type=int, default=None, help="Answer DNS SRV/A for <service>.service.raftctl on this port.")
    @click.option("--join", is_flag=True,
                  help="This replica joins a running cluster (`raftctl cluster add-member` adds it, as a learner the "
                       "leader promotes once it has caught up): it votes only once its log makes it a voter. Give it "
                       "to every replica added at runtime, on every start.")
    @click.option("--compact-entries", type=click.IntRange(2), default=20000, show_default=True,
                  help="Snapshot and compact the Raft log once it holds this many entries.")
    @click.option("--heartbeat-ttl", default="3s", show_default=True,
                  help="A machine silent this long is declared down.")
    @click.option("--heartbeat-interval", default="1s", show_default=True,
                  help="The shortest interval agents are told to heartbeat at (the budget lengthens it).")
    @click.option("--max-heartbeats-per-second", "max_heartbeats", type=click.IntRange(0), default=500,
                  show_default=True,
                  help="The leader's heartbeat budget: agents are told max(--heartbeat-interval, up machines / this) "
                       "and a TTL of the same multiple (Nomad's max_heartbeats_per_second, default 50). 500/s x "
                       "~300-420 us of leader CPU per heartbeat at 10,000 machines (docs/scaling.md) = a sixth of its "
                       "core; 3,000 machines beat every 6 s, 10,000 every 20 s (TTL 60 s). 0: no budget. Every "
                       "replica takes the same value.")
    @click.option("--max-connections", type=click.IntRange(0), default=0, show_default=True,
                  help="Open API connections at most; past it a new connection is answered 503 overloaded and closed, "
                       "so clients cannot take the descriptors the Raft log needs. 0: the open-files limit (raised "
                       "to its hard limit at start) minus 512.")
    @click.option("--reserved-connections", type=click.IntRange(0), default=None,
                  help="Of --max-connections, the last ones kept for admin and operator tokens: a connection admitted "
                       "into them serves only those (any other request is answered 503 overloaded and the connection "
                       "closed), so a fleet holding every other slot cannot lock operators out. Default: an eighth "
                       "of the limit, at most 32.")
    @click.option("--max-body", default="1Mi", show_default=True,
                  help="Largest JSON/CBOR request body; larger ones get 413 too_large (blob uploads stream apart).")
    @click.option("--tls-cert", type=click.Path(dir_okay=False), default=None,
                  help="Serve the HTTP API over HTTPS with this certificate (PEM; see `raftctl tls init`).")
    @click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="The private key of --tls-cert.")
    @click.option("--tls-ca", type=click.Path(dir_okay=False), default=None,
                  help="CA that other replicas' certificates are verified with (default: the system's trust store).")
    @click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
    def server(node_id: str, data_dir: str, raft_addr: str, peers: tuple[str, ...], api_addr: str,
               advertise_api: str | None, secret: str | None, secret_file: str | None, insecure_dev: bool,
               dns_port: int | None, join: bool, compact_entries: int, heartbeat_ttl: str, heartbeat_interval: str, max_heartbeats: int,
               max_connections: int, reserved_connections: int | None, max_body: str,
               tls_cert: str | None, tls_key: str | None, tls_ca: str | None, log_level: str) -> None:
        """Run a control replica (Raft member + HTTP API; the leader runs the controllers)."""
        from raftctl.node.replica import ServerConfig, serve
        from raftctl.statemachine.units import parse_duration

        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if log_level != "debug":
            logging.getLogger("pysyncobj").setLevel(logging.WARNING)
        value = read_secret(secret, secret_file)
        if value is None and not insecure_dev:
            fail("no cluster secret: pass --secret-file or RAFTCTL_SECRET (Raft traffic is encrypted and "
                 "authenticated with it); --insecure-dev runs without one, never do that on a shared machine")
        for flag, addr in [("--raft", raft_addr), ("--api", api_addr)] + [("--peer", p) for p in peers]:
            host, _, port = addr.rpartition(":")
            if not host or not port.isdigit():
                fail(f"{flag}: {addr!r} is not host:port")
        if raft_addr == api_addr:
            fail(f"--api: {api_addr} is also --raft; Raft and the HTTP API each need a port of their own")
        if bool(tls_cert) != bool(tls_key):
            fail("--tls-cert and --tls-key go together")
        if tls_ca and not tls_cert:
            fail("--tls-ca: replicas verify each other only when they serve HTTPS; add --tls-cert and --tls-key")
        ttl_s = _seconds(parse_duration, heartbeat_ttl, "--heartbeat-ttl", ValidationError)
        interval_s = _seconds(parse_duration, heartbeat_interval, "--heartbeat-interval", ValidationError)
        if interval_s <= 0:
            fail("--heartbeat-interval: must be more than 0")
        if ttl_s <= interval_s:
            fail(f"--heartbeat-ttl: {heartbeat_ttl} is not longer than --heartbeat-interval {heartbeat_interval}; "
                 f"a machine would be declared down between two heartbeats")
        cfg = ServerConfig(node_id=node_id, data_dir=os.path.abspath(data_dir), raft=raft_addr,
                           peers=[p for p in peers if p != raft_addr], api=api_addr, secret=value,
                           insecure_dev=insecure_dev, dns_port=dns_port, advertise_api=advertise_api,
                           compact_entries=compact_entries, join=join, max_body=_body_limit(max_body),
                           heartbeat_ttl_s=ttl_s, heartbeat_interval_s=interval_s,
                           max_heartbeats_per_s=max_heartbeats, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                           max_connections=max_connections, reserved_connections=reserved_connections)
        try:
            loop = aio.event_loop_from_env()
        except ValueError as exc:
            fail(str(exc))
        try:
            aio.run(serve(cfg), loop)
        except ValidationError as exc:   # what the replica refused before it started (a port it cannot listen on)
            fail(f"--{exc.field}: {exc.message}" if exc.field else exc.message)
