"""A small synchronous API client for the CLI: failover across replicas, safe retries."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from raftctl.errors import RaftctlError, Unavailable

RETRYABLE = {502, 503, 504}


class ApiError(RaftctlError):
    pass


class Client:
    def __init__(self, servers: list[str], token: str | None = None, *, timeout: float = 10.0,
                 retry_for: float | None = None) -> None:
        if not servers:
            raise ApiError("no server given: pass --server or set RAFTCTL_SERVER", field="server", code="usage")
        self.servers = [s if "://" in s else "http://" + s for s in servers]
        self.token = token
        self.timeout = timeout
        # how long to keep trying other replicas (leader elections take ~1-2 s)
        self.retry_for = retry_for if retry_for is not None else float(os.environ.get("RAFTCTL_RETRY_FOR", "15"))
        self._preferred = 0

    def request(self, method: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """JSON in, JSON out. Writes carry one X-Request-Id across retries, so a retry never applies twice."""
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "X-Request-Id": uuid.uuid4().hex}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        deadline = time.monotonic() + self.retry_for
        last: Exception | None = None
        attempt = 0
        while True:
            server = self.servers[(self._preferred + attempt) % len(self.servers)]
            req = urllib.request.Request(server + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                    self._preferred = (self._preferred + attempt) % len(self.servers)
                    raw = resp.read()
                    return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                payload = _error_payload(exc)
                if exc.code in RETRYABLE:
                    last = ApiError(payload.get("message", str(exc)), code=payload.get("code", "unavailable"),
                                    field=payload.get("field"), http_status=exc.code)
                else:
                    raise ApiError(payload.get("message", str(exc)), code=payload.get("code", "error"),
                                   field=payload.get("field"), http_status=exc.code) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = exc
            attempt += 1
            if time.monotonic() > deadline:
                raise Unavailable(f"no replica answered ({', '.join(self.servers)}): {last}") from None
            if attempt % len(self.servers) == 0:
                time.sleep(0.3)


def _error_payload(exc: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        data = json.loads(exc.read() or b"{}")
        return data.get("error") or {}
    except Exception:
        return {"message": f"HTTP {exc.code} {exc.reason}"}
