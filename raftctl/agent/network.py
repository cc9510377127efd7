"""Bridge-mode networking with pyroute2 (issue 16): a network namespace per container, a veth pair to the
machine's bridge, an address from the machine's subnet, loopback, a default route via the bridge's address; and
host-gw routes to the other machines' subnets.

Every name this creates outside the agent's data dir carries the cluster and the machine (:class:`Names`), so two
clusters, or two agents of one cluster (``raftctl up``), on one host never touch each other's: the bridge, the
veths, the namespaces (bind-mounted at ``<netns dir>/<prefix><container id>``, so ``ip netns`` shows them) and the
host-gw routes (kept in ``<data dir>/routes.json``: the routes this agent added, so it removes exactly those).
Only what this module made is ever removed.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import subprocess

from pyroute2 import IPRoute, netns

from raftctl.agent.netnames import BRIDGE, RUN_DIR, SUBNET_PREFIX, Names, bridge_mac

log = logging.getLogger("raftctl.agent.network")
IP_TIMEOUT_S = 20.0
ROUTE_PROTO = 211           # the rtm_protocol of raftctl's host-gw routes (shown by `ip route` as "proto 211")
__all__ = ["BRIDGE", "RUN_DIR", "SUBNET_PREFIX", "Names"]


def gateway_of(address: str) -> str:
    """The bridge's address (``.1``) of the /24 holding ``address``."""
    net = ipaddress.ip_interface(f"{address.split('/')[0]}/{SUBNET_PREFIX}").network
    return str(net.network_address + 1)


def _first(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _sysctl(path: str, value: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        log.warning("cannot set %s to %s: %s", path, value, exc)


def ensure_bridge(gateway_cidr: str, name: str = BRIDGE) -> int:
    """Create the bridge (idempotent) with the gateway address, e.g. ``10.88.1.1/24``; return its index. Turns on
    IPv4 forwarding (containers reach other machines and the outside through the host) and, on the bridge only,
    route_localnet (a published port answers a connection to 127.0.0.1 from the host itself). The bridge has the
    fixed address :func:`~raftctl.agent.netnames.bridge_mac` (set again on a bridge that has another one): the
    kernel's default, the lowest MAC of its ports, changes when a container comes or goes and cuts off the
    containers that resolved the gateway before."""
    iface = ipaddress.ip_interface(gateway_cidr)
    mac = bridge_mac(name)
    with IPRoute() as ipr:
        idx = _first(ipr, name)
        if idx is None:
            try:
                ipr.link("add", ifname=name, kind="bridge", address=mac)
            except Exception as exc:  # another thread of this agent made it first
                if getattr(exc, "code", None) != errno.EEXIST:
                    raise
            idx = _first(ipr, name)
            if idx is None:
                raise OSError(f"bridge {name} could not be created")
        if str(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")).lower() != mac:
            # made without one (an older agent, by hand): its containers learn the new address from the
            # gratuitous ARP that arp_notify sends on the change, instead of timing out on the old one
            _sysctl(f"/proc/sys/net/ipv4/conf/{name}/arp_notify", "1")
            ipr.link("set", index=idx, address=mac)
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx)}
        if (str(iface.ip), iface.network.prefixlen) not in have:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ipr.link("set", index=idx, state="up")
    _sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    _sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")
    return idx


def _ip(*args: str, batch: str | None = None) -> None:
    """Run iproute2's ``ip`` (a subprocess: pyroute2's namespace helpers fork the agent through multiprocessing,
    and a forked copy of an asyncio process can deliver a signal to the parent's loop)."""
    r = subprocess.run(["ip", *args], input=batch, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if r.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {(r.stderr or r.stdout).strip()[:300]}")


def attach(id: str, address_cidr: str, gateway: str, *, bridge: str = BRIDGE, names: Names | None = None) -> str:
    """Make the container's netns with ``eth0`` = ``address_cidr`` on ``bridge``, loopback up and a default
    route via ``gateway``; return the netns path. On failure nothing of it is left. The namespace is made by
    ``ip netns add``, so it lives in /run/netns (``names.run_dir`` must be that)."""
    names = names or Names()
    if names.bridge != BRIDGE:
        bridge = names.bridge
    iface = ipaddress.ip_interface(address_cidr)
    path = names.netns(id)
    name = os.path.basename(path)
    if os.path.dirname(path) != RUN_DIR:
        raise OSError(f"network namespaces live in {RUN_DIR}, not {os.path.dirname(path)}")
    host_if, _ = names.veths(id)
    if os.path.lexists(path):
        detach(id, names=names)              # a leftover of a create that died half-way
    try:
        try:
            _ip("-batch", "-", batch=f"netns add {name}\nlink add {host_if} type veth peer name eth0 netns {name}\n"
                                    f"link set {host_if} master {bridge} up\n")
        except OSError:                      # a veth left without its namespace: once more after a clean-up
            detach(id, names=names)
            _ip("-batch", "-", batch=f"netns add {name}\nlink add {host_if} type veth peer name eth0 netns {name}\n"
                                    f"link set {host_if} master {bridge} up\n")
        _ip("-netns", name, "-batch", "-", batch=(
            "link set lo up\n"
            f"addr add {iface.ip}/{iface.network.prefixlen} dev eth0\n"
            "link set eth0 up\n"
            f"route add default via {gateway}\n"))
    except BaseException:
        detach(id, names=names)
        raise
    log.info("netns %s: eth0 %s via %s on %s", path, address_cidr, gateway, bridge)
    return path


def detach(id: str, *, names: Names | None = None) -> bool:
    """Remove the veth pair and the namespace (idempotent); whether there was anything to remove."""
    names = names or Names()
    host_if, _ = names.veths(id)
    found = False
    with IPRoute() as ipr:
        idx = _first(ipr, host_if)
        if idx is not None:
            ipr.link("del", index=idx)
            found = True
    path = names.netns(id)
    if os.path.lexists(path):
        try:
            netns.remove(path)
        except OSError:
            os.unlink(path)
        found = True
    return found


def host_veths(names: Names) -> list[str]:
    """The host-side veths enslaved to this agent's bridge."""
    with IPRoute() as ipr:
        br = _first(ipr, names.bridge)
        if br is None:
            return []
        return sorted(str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()
                      if link.get_attr("IFLA_MASTER") == br)


def bridge_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return _first(ipr, name) is not None


def delete_link(name: str) -> bool:
    with IPRoute() as ipr:
        idx = _first(ipr, name)
        if idx is not None:
            ipr.link("del", index=idx)
            return True
    return False


def delete_bridge(name: str = BRIDGE) -> bool:
    with IPRoute() as ipr:
        idx = _first(ipr, name)
        if idx is not None:
            ipr.link("del", index=idx)
            return True
    return False


RTN_LOCAL = 2


def is_local(ipr: IPRoute, address: str) -> bool:
    """Whether ``address`` is this host's own (its route is local: 127.0.0.2 of ``raftctl up`` too)."""
    try:
        return any(r["type"] == RTN_LOCAL for r in ipr.route("get", dst=address))
    except Exception:
        return False


def set_peer_routes(routes: dict[str, str], state_file: str | None = None) -> dict[str, str]:
    """host-gw: route each other machine's container subnet via that machine's address (``{subnet: via}``),
    and remove the routes this agent added before (kept in ``state_file``) that are no longer wanted. A peer
    whose address is this host's own (several agents on one host) needs no route: its bridge is here. Returns
    the routes now in place."""
    before: dict[str, str] = {}
    if state_file and os.path.exists(state_file):
        try:
            with open(state_file) as f:
                before = {str(k): str(v) for k, v in json.load(f).items()}
        except (OSError, ValueError, AttributeError):
            before = {}
    with IPRoute() as ipr:
        wanted = {s: via for s, via in routes.items() if not is_local(ipr, via)}
        for subnet in sorted(set(before) - set(wanted)):
            try:
                ipr.route("del", dst=subnet, gateway=before[subnet], proto=ROUTE_PROTO)
            except Exception as exc:
                log.info("route %s via %s already gone (%s)", subnet, before[subnet], exc)
        for subnet, via in sorted(wanted.items()):   # every time: a route deleted behind our back comes back
            ipr.route("replace", dst=subnet, gateway=via, proto=ROUTE_PROTO)
    if state_file and wanted != before:
        tmp = state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(wanted, f, sort_keys=True)
        os.replace(tmp, state_file)
    return wanted
