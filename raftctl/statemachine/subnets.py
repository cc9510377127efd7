"""Container subnets and addresses (issue 16), pure: apply allocates them, so every replica allocates alike.

Each machine gets the lowest free /24 of a pool (default :data:`DEFAULT_POOL`) when it registers; a bridge
placement gets the lowest free host address of its machine's subnet when a Plan places it. ``.1`` of a subnet is
the machine's bridge; ``.0`` and the broadcast address are never given out.
"""
from __future__ import annotations

import ipaddress
from typing import Final, Iterable

DEFAULT_POOL: Final = "10.88.0.0/16"
SUBNET_PREFIX: Final = 24


class PoolError(ValueError):
    """A pool that is not an IPv4 network of prefix length at most /24."""


def parse_pool(pool: str) -> ipaddress.IPv4Network:
    """The pool as a network, or :class:`PoolError` saying why not."""
    try:
        net = ipaddress.ip_network(pool, strict=True)
    except ValueError as exc:
        raise PoolError(f"{pool[:60]!r} is not a network: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise PoolError(f"{pool[:60]!r} is not an IPv4 network")
    if net.prefixlen > SUBNET_PREFIX:
        raise PoolError(f"{pool} is smaller than one /{SUBNET_PREFIX}")
    return net


def subnet_key(subnet: str) -> int | None:
    """The network address of a /24 as an integer (what :func:`allocate_subnet` compares); None if malformed."""
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError:
        return None
    return int(net.network_address) if net.prefixlen == SUBNET_PREFIX else None


def allocate_subnet(pool: str, held: set[int]) -> str | None:
    """The lowest /24 of ``pool`` whose :func:`subnet_key` is not in ``held`` (None when the pool is exhausted).
    Every subnet is a /24 on a /24 boundary, so two overlap only when they are equal. Raises :class:`PoolError`
    for a bad pool."""
    net = parse_pool(pool)
    first = int(net.network_address)
    for n in range(first, first + net.num_addresses, 1 << (32 - SUBNET_PREFIX)):
        if n not in held:
            return f"{ipaddress.IPv4Address(n)}/{SUBNET_PREFIX}"
    return None


def gateway(subnet: str) -> str:
    """The bridge's address in ``subnet`` (its first host, ``.1``)."""
    return str(ipaddress.IPv4Network(subnet).network_address + 1)


def allocate_address(subnet: str, taken: Iterable[str]) -> str | None:
    """The lowest host address of ``subnet`` after the bridge's (``.1``) that is not in ``taken``; None when
    every address is held."""
    net = ipaddress.IPv4Network(subnet)
    held = set(taken)
    first = int(net.network_address) + 2
    for n in range(first, int(net.broadcast_address)):
        addr = str(ipaddress.IPv4Address(n))
        if addr not in held:
            return addr
    return None
