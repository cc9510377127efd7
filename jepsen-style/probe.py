"""Tiny TCP probe, run inside a test host's namespace.

    probe.py listen ADDR PORT            accept and close connections forever
    probe.py connect TIMEOUT HOST:PORT…  print {"HOST:PORT": true|false, …} as JSON

Stdlib only; it starts fast. A dropped SYN (or SYN-ACK) shows as a timeout (false);
"connection refused" also counts as false, so every host must run a listener.
"""
from __future__ import annotations

import asyncio
import json
import sys


async def _listen(addr: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, addr, port, reuse_address=True)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


async def _one(target: str, timeout: float) -> bool:
    host, _, port = target.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


async def probe(targets: list[str], timeout: float) -> dict[str, bool]:
    results = await asyncio.gather(*(_one(t, timeout) for t in targets))
    return dict(zip(targets, results))


def main(argv: list[str]) -> None:
    if argv[0] == "listen":
        asyncio.run(_listen(argv[1], int(argv[2])))
    elif argv[0] == "connect":
        print(json.dumps(asyncio.run(probe(argv[2:], float(argv[1])))))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
