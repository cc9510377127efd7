"""The host-wide names of one agent's network objects (issue 16), without pyroute2: the runc driver asks them
before it knows whether it needs the network code at all."""
from __future__ import annotations

import hashlib
import os

BRIDGE = "raftctl0"
RUN_DIR = "/run/netns"
SUBNET_PREFIX = 24          # every machine subnet is a /24 (raftctl/statemachine/subnets.py)


def bridge_mac(bridge: str) -> str:
    """The fixed MAC address of the bridge named ``bridge``: locally administered unicast (``02:`` and 5 bytes of a
    hash of the name), so the same bridge always has the same address, also when it is made again.

    A bridge without an address of its own takes the lowest MAC among its ports and changes it whenever a port
    with a lower one joins or the lowest one leaves. A container that resolved its gateway (``.1``) to the old
    address keeps sending to it (its neighbour entry stays valid 15-45 s, then 5 s of delay and unicast probes);
    a frame for the MAC of another port enters through the container's veth as PACKET_OTHERHOST and IP drops
    it: every connection of that container through the gateway times out for up to ~50 s (issue 16's flaky
    egress check: a1's SYNs reached the bridge addressed to a2's veth after a3 joined with a lower MAC). An
    address set explicitly is never recalculated."""
    h = hashlib.sha256(f"raftctl-bridge-mac/{bridge}".encode()).hexdigest()
    return "02:" + ":".join(h[i:i + 2] for i in range(0, 10, 2))


class Names:
    """The host-wide names of one agent's network objects: ``cluster``/``machine`` None (a test) gives the plain
    ``raftctl0`` bridge and ``raftctl-<id>`` namespaces."""

    def __init__(self, cluster: str | None = None, machine: str | None = None, run_dir: str = RUN_DIR) -> None:
        self.run_dir = run_dir
        if cluster is None:
            self.bridge, self.scope = BRIDGE, ""
            self.netns_prefix = "raftctl--"          # never a prefix of a named cluster's (raftctl-<id>-)
        else:
            scope = f"{cluster}/{machine or ''}"
            h = hashlib.sha256(scope.encode()).hexdigest()
            # 15 characters at most (IFNAMSIZ): r + 8 of the cluster id + - + 5 of a hash of cluster/machine
            self.bridge = f"r{cluster[:8]}-{h[:5]}"
            self.scope = scope
            # fixed-length: no machine's prefix is another machine's (ids may hold "-")
            self.netns_prefix = f"raftctl-{cluster}-{h[:8]}-"
        self.table = "raftctl" if cluster is None else f"raftctl_{cluster}_{self.netns_prefix[-9:-1]}"

    def netns(self, id: str) -> str:
        return os.path.join(self.run_dir, self.netns_prefix + id)

    def veths(self, id: str) -> tuple[str, str]:
        """Host-side and (temporary) container-side interface names; at most 15 characters."""
        h = hashlib.sha256(f"{self.scope}/{id}".encode()).hexdigest()[:10]
        return f"rv{h}", f"rp{h}"

    def ids_in_run_dir(self) -> list[str]:
        """The container ids whose namespaces this agent has bind-mounted in the run dir."""
        try:
            names = os.listdir(self.run_dir)
        except FileNotFoundError:
            return []
        return sorted(n[len(self.netns_prefix):] for n in names if n.startswith(self.netns_prefix))
