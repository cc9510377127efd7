"""The agent's own nftables table (issue 16): published ports (DNAT from the machine's addresses to a bridge
container), egress masquerade (or a drop for ``egress: none``), and the SNAT a published port needs when it is
reached from the host itself (127.0.0.1) or from a container of the same bridge (hairpin).

Level-triggered: :func:`render` writes the whole table from what should be there (the bridge containers the agent
has now), and :func:`apply` replaces the table in one nft transaction, so a restart, a leak or a half-done change
is repaired by the next apply, and nothing else on the host (another agent's table, the host's own firewall) is
touched. :func:`delete` removes the table.
"""
from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Iterable

TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
NFT_TIMEOUT_S = 20.0


class NftError(Exception):
    """nft is missing or refused the table."""


@dataclass(frozen=True)
class Endpoint:
    """One bridge container as the table sees it."""

    id: str
    address: str                                        # its IP, no prefix
    egress: str = "masquerade"                          # "masquerade" | "none"
    publish: tuple[tuple[int, int], ...] = field(default=())   # (host port, container port)


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise NftError(f"{what}: {value!r} is not an IPv4 address") from None


def _net(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value))
    except ValueError:
        raise NftError(f"{what}: {value!r} is not an IPv4 network") from None


def _port(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise NftError(f"{what}: {value!r} is not a port")
    return value


def _comment(id: str) -> str:
    return '"' + re.sub(r"[^A-Za-z0-9_.-]", "_", id)[:120] + '"'


def render(table: str, bridge: str, subnet: str, peers: Iterable[str], endpoints: Iterable[Endpoint]) -> str:
    """The nft script that replaces ``table`` (family ip) with the rules for ``endpoints``. ``subnet`` is this
    machine's container subnet, ``peers`` the other machines' (traffic between container subnets is neither
    masqueraded nor cut off by ``egress: none``)."""
    if not TABLE_RE.match(table):
        raise NftError(f"table: {table!r} is not a plain nft name")
    if not re.match(r"^[A-Za-z0-9_.-]{1,15}$", bridge):
        raise NftError(f"bridge: {bridge!r} is not an interface name")
    own = _net(subnet, "subnet")
    nets = sorted({own, *(_net(p, "peers") for p in peers)}, key=lambda n: ipaddress.IPv4Network(n))
    dnat, drop = [], []
    for e in sorted(endpoints, key=lambda e: e.id):
        ip, c = _ip(e.address, f"{e.id}.address"), _comment(e.id)
        for host_port, port in e.publish:
            hp, cp = _port(host_port, f"{e.id}.publish"), _port(port, f"{e.id}.publish")
            for proto in ("tcp", "udp"):
                dnat.append(f"fib daddr type local {proto} dport {hp} dnat to {ip}:{cp} comment {c}")
        if e.egress == "none":
            drop.append(f"ip saddr {ip} ip daddr != @subnets drop comment {c}")
    lines = [
        f"table ip {table}",             # so that the delete below never fails
        f"delete table ip {table}",
        f"table ip {table} {{",
        f"  set subnets {{ type ipv4_addr; flags interval; elements = {{ {', '.join(nets)} }} }}",
        "  chain guard {",             # route_localnet is on for the bridge: no container may send to the
        "    type filter hook prerouting priority raw; policy accept;",   # host's loopback (CVE-2020-8558)
        f'    iifname "{bridge}" ip daddr 127.0.0.0/8 drop',
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        *(f"    {r}" for r in dnat),
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        *(f"    {r}" for r in dnat),
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "{bridge}" ip saddr 127.0.0.0/8 masquerade',             # a published port from the host
        f'    oifname "{bridge}" ip saddr {own} ct status dnat masquerade',    # ... from a container beside it
        # egress: every container of the subnet leaves with the machine's address (those with egress none never get
        # here: forward drops them), so a plain container changes nothing in the table
        f"    ip saddr {own} ip daddr != @subnets masquerade",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        *(f"    {r}" for r in drop),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _nft(script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise NftError("nft is not installed (apt-get install nftables): bridge networking needs it")
    r = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    if r.returncode != 0:
        raise NftError(f"nft refused the table: {r.stderr.strip()[:500]}")


def apply(script: str) -> None:
    """Replace the table with ``script`` (from :func:`render`) in one transaction."""
    _nft(script)


def delete(table: str) -> None:
    """Remove the table if it is there."""
    if not TABLE_RE.match(table):
        raise NftError(f"table: {table!r} is not a plain nft name")
    _nft(f"table ip {table}\ndelete table ip {table}\n")


def exists(table: str) -> bool:
    nft = shutil.which("nft")
    if nft is None:
        return False
    r = subprocess.run([nft, "list", "table", "ip", table], capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    return r.returncode == 0
