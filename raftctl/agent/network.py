"""Bridge-mode networking with pyroute2: a network namespace per container, a veth pair
to the ``raftctl0`` bridge, an address from the machine's subnet and a default route via
the bridge's address; host-gw routes to other machines' subnets.

Namespaces are bind-mounted at ``<run_dir>/<container id>`` (``/var/run/netns`` by
default, so ``ip netns`` shows them) and that path goes into the OCI config.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os

from pyroute2 import IPRoute, netns

log = logging.getLogger("raftctl.agent.network")
BRIDGE = "raftctl0"
RUN_DIR = "/var/run/netns"


def netns_path(id: str, run_dir: str = RUN_DIR) -> str:
    return os.path.join(run_dir, f"raftctl-{id}")


def veth_names(id: str) -> tuple[str, str]:
    """Host-side and (temporary) container-side interface names; at most 15 characters."""
    h = hashlib.sha256(id.encode()).hexdigest()[:10]
    return f"rv{h}", f"rp{h}"


def _first(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def ensure_bridge(gateway_cidr: str, name: str = BRIDGE) -> int:
    """Create the bridge (idempotent) with the gateway address, e.g. ``10.88.1.1/24``; return its index."""
    iface = ipaddress.ip_interface(gateway_cidr)
    with IPRoute() as ipr:
        idx = _first(ipr, name)
        if idx is None:
            ipr.link("add", ifname=name, kind="bridge")
            idx = _first(ipr, name)
            assert idx is not None
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx)}
        if (str(iface.ip), iface.network.prefixlen) not in have:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ipr.link("set", index=idx, state="up")
    return idx


def attach(id: str, address_cidr: str, gateway: str, *, bridge: str = BRIDGE, run_dir: str = RUN_DIR) -> str:
    """Make the container's netns with ``eth0`` = ``address_cidr`` on ``bridge``; return the netns path."""
    iface = ipaddress.ip_interface(address_cidr)
    path = netns_path(id, run_dir)
    host_if, peer_if = veth_names(id)
    os.makedirs(run_dir, exist_ok=True)
    netns.create(path)
    try:
        with IPRoute() as ipr:
            br = _first(ipr, bridge)
            if br is None:
                raise OSError(f"bridge {bridge} does not exist (ensure_bridge first)")
            ipr.link("add", ifname=host_if, kind="veth", peer=peer_if)
            host_idx, peer_idx = _first(ipr, host_if), _first(ipr, peer_if)
            ipr.link("set", index=peer_idx, net_ns_fd=path)
            ipr.link("set", index=host_idx, master=br, state="up")
        with IPRoute(netns=path) as ns:
            lo = _first(ns, "lo")
            ns.link("set", index=lo, state="up")
            idx = _first(ns, peer_if)
            ns.link("set", index=idx, ifname="eth0")
            ns.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ns.link("set", index=idx, state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)
    except BaseException:
        detach(id, run_dir=run_dir)
        raise
    log.info("netns %s: eth0 %s via %s on %s", path, address_cidr, gateway, bridge)
    return path


def detach(id: str, *, run_dir: str = RUN_DIR) -> None:
    """Remove the veth pair and the namespace (idempotent)."""
    host_if, _ = veth_names(id)
    with IPRoute() as ipr:
        idx = _first(ipr, host_if)
        if idx is not None:
            ipr.link("del", index=idx)
    path = netns_path(id, run_dir)
    if os.path.exists(path):
        netns.remove(path)


def set_peer_routes(routes: dict[str, str]) -> None:
    """host-gw: route each other machine's container subnet via that machine's address."""
    with IPRoute() as ipr:
        for subnet, via in sorted(routes.items()):
            ipr.route("replace", dst=subnet, gateway=via)


def delete_bridge(name: str = BRIDGE) -> None:
    with IPRoute() as ipr:
        idx = _first(ipr, name)
        if idx is not None:
            ipr.link("del", index=idx)
