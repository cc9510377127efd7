"""Service discovery: the pure view the server answers from, a client that survives outages, DNS.

- ``raftctl.discovery.view``: ``lookup``, ``parse_near``, ``service_index`` (pure).
- ``raftctl.discovery.client``: ``Client`` (asyncio), ``SyncClient``, ``Answer``, ``NoEndpoints``.
- ``raftctl.discovery.dns``: ``DnsServer`` (SRV/A/AAAA for ``<service>.service.raftctl``).
"""
from __future__ import annotations

from raftctl.discovery.client import Answer, Client, NoEndpoints, SyncClient
from raftctl.discovery.dns import DnsServer
from raftctl.discovery.view import lookup, parse_near, service_index

__all__ = ["Answer", "Client", "DnsServer", "NoEndpoints", "SyncClient", "lookup", "parse_near", "service_index"]
