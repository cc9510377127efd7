"""Bridge mode for a driver (issue 16): what one agent's bridge containers need from the host, kept level-triggered.

:class:`BridgeNet` gives a container its namespace (network.attach) before runc creates it, takes it away when the
container is removed, keeps the agent's nftables table (nft.py) equal to the bridge containers it has, keeps the
host-gw routes equal to the peers the control plane last named, and sweeps what a crash left behind: namespaces
and veths of containers that are gone, and the bridge and table once no bridge container is left. Loaded by the
runc driver on its first bridge container (pyroute2 costs ~0.5 s to import).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Iterable

from raftctl.agent import network, nft
from raftctl.agent.network import Names

log = logging.getLogger("raftctl.agent.bridge")


class BridgeNet:
    def __init__(self, data_dir: str, cluster: str | None, machine: str | None,
                 run_dir: str = network.RUN_DIR) -> None:
        self.names = Names(cluster, machine, run_dir)
        self.state_file = os.path.join(data_dir, "network.json")      # {subnet, peers: {subnet: via}}
        self.routes_file = os.path.join(data_dir, "routes.json")      # the host-gw routes this agent added
        self.lock = threading.RLock()
        self.subnet: str | None = None
        self.peers: dict[str, str] = {}
        self._bridge_up: str | None = None      # the gateway the bridge was last seen holding
        self._table: str | None = None          # the script last applied (nothing to do when it would not change)
        self._load()

    def _load(self) -> None:
        try:
            with open(self.state_file) as f:
                st = json.load(f)
            self.subnet = st.get("subnet") or None
            self.peers = {str(k): str(v) for k, v in (st.get("peers") or {}).items()}
        except (OSError, ValueError, AttributeError):
            pass

    def _save(self) -> None:
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"subnet": self.subnet, "peers": self.peers}, f, sort_keys=True)
        os.replace(tmp, self.state_file)

    # -- containers ---------------------------------------------------------------------------------
    def attach(self, id: str, address: str) -> str:
        """The container's namespace with ``address`` (its /24 is the machine's subnet); its path."""
        ip = address.split("/")[0]
        gateway = network.gateway_of(ip)
        with self.lock:
            subnet = f"{network.gateway_of(ip).rsplit('.', 1)[0]}.0/{network.SUBNET_PREFIX}"
            if self.subnet != subnet:
                self.subnet = subnet
                self._save()
            if self._bridge_up != gateway:
                network.ensure_bridge(f"{gateway}/{network.SUBNET_PREFIX}", self.names.bridge)
                self._bridge_up = gateway
            try:
                return network.attach(id, f"{ip}/{network.SUBNET_PREFIX}", gateway, names=self.names)
            except OSError:
                if network.bridge_exists(self.names.bridge):
                    raise
                self._bridge_up = None                 # removed behind our back: once more, with a bridge
                network.ensure_bridge(f"{gateway}/{network.SUBNET_PREFIX}", self.names.bridge)
                self._bridge_up = gateway
                return network.attach(id, f"{ip}/{network.SUBNET_PREFIX}", gateway, names=self.names)

    def detach(self, id: str) -> bool:
        with self.lock:
            return network.detach(id, names=self.names)

    def netns(self, id: str) -> str:
        return self.names.netns(id)

    def sync(self, endpoints: Iterable[nft.Endpoint], force: bool = True) -> None:
        """The table for exactly ``endpoints`` (every bridge container this agent has); none left: no table and
        no bridge. ``force`` False skips the nft call when the table would not change since this process last
        applied it (a container that publishes nothing and may leave: the common start)."""
        eps = list(endpoints)
        with self.lock:
            if not eps:
                self._table = None
                if nft.exists(self.names.table):
                    nft.delete(self.names.table)
                if network.host_veths(self.names) == [] and network.delete_bridge(self.names.bridge):
                    self._bridge_up = None
                    log.info("bridge %s removed: no bridge container left", self.names.bridge)
                return
            subnet = self.subnet or f"{eps[0].address.rsplit('.', 1)[0]}.0/{network.SUBNET_PREFIX}"
            script = nft.render(self.names.table, self.names.bridge, subnet, self.peers, eps)
            if force or script != self._table:
                nft.apply(script)
                self._table = script

    def sweep(self, live: set[str]) -> list[str]:
        """Remove the namespaces and veths of containers not in ``live`` (a crash between create and remove, a
        bundle deleted behind the agent's back); the ids swept."""
        swept = []
        with self.lock:
            for id in self.names.ids_in_run_dir():
                if id not in live and network.detach(id, names=self.names):
                    swept.append(id)
            wanted = {self.names.veths(id)[0] for id in live}
            for veth in network.host_veths(self.names):
                if veth not in wanted:
                    network.delete_link(veth)
                    swept.append(veth)
        if swept:
            log.warning("swept network leftovers of containers that are gone: %s", ", ".join(swept))
        return swept

    # -- the machine ---------------------------------------------------------------------------------
    def configure(self, info: dict[str, Any]) -> bool:
        """What the control plane says of the network (assignments' ``network``: subnet, peers): host-gw routes
        to the peers' subnets, and the subnets the table treats as inside. Whether those subnets changed (then
        the table is to be synced)."""
        peers = {str(p["subnet"]): str(p["address"]) for p in info.get("peers") or []
                 if isinstance(p, dict) and p.get("subnet") and p.get("address")}
        with self.lock:
            changed = peers != self.peers or (info.get("subnet") or self.subnet) != self.subnet
            self.peers = peers
            if info.get("subnet"):
                self.subnet = str(info["subnet"])
            if changed:
                self._save()
            network.set_peer_routes(peers, self.routes_file)
            return changed

    def release(self) -> None:
        """Everything of this agent's on the host: routes, table, bridge (call only with no container left)."""
        with self.lock:
            network.set_peer_routes({}, self.routes_file)
            if nft.exists(self.names.table):
                nft.delete(self.names.table)
            network.delete_bridge(self.names.bridge)
