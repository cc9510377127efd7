"""A small synchronous API client for the CLI: failover across replicas, safe retries."""
from __future__ import annotations

import json
import os
import random
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from raftctl.errors import RaftctlError, Unavailable

RETRYABLE = {502, 503, 504}

# After every replica failed once in a row, pause before the next round: first ROUND_PAUSE_S, doubling up to
# ROUND_PAUSE_MAX_S, each drawn at random from half to all of it (clients that failed together do not retry in
# step). Within a round the next replica is tried at once. A fixed 0.3 s pause here was a third of a leader
# failover as a client saw it (bench/failover.py: an election takes ~0.05 s once a follower's timer fires).
ROUND_PAUSE_S = 0.02
ROUND_PAUSE_MAX_S = 0.5


def round_pause(rounds: int, rng: random.Random | None = None) -> float:
    """The pause after ``rounds`` (>= 1) full rounds of replicas failed in a row."""
    base = min(ROUND_PAUSE_MAX_S, ROUND_PAUSE_S * 2 ** min(max(rounds, 1) - 1, 16))
    return base * (rng or random).uniform(0.5, 1.0)


@dataclass(frozen=True)
class Upload:
    """A request body streamed from a file (image blobs), not encoded as JSON."""

    path: str
    content_type: str = "application/octet-stream"


class ApiError(RaftctlError):
    pass


class Client:
    def __init__(self, servers: list[str], token: str | None = None, *, timeout: float = 10.0,
                 retry_for: float | None = None, ca: str | None = None) -> None:
        if not servers:
            raise ApiError("no server given: pass --server or set RAFTCTL_SERVER", field="server", code="usage")
        self.servers = [s if "://" in s else "http://" + s for s in servers]
        self.token = token
        # https:// servers are verified against ``ca`` (the cluster's CA file) or the system trust store
        self.ca = ca
        self._ssl: ssl.SSLContext | None = None
        self.timeout = timeout
        # how long to keep trying other replicas (a leader failover takes well under 1 s)
        self.retry_for = retry_for if retry_for is not None else float(os.environ.get("RAFTCTL_RETRY_FOR", "15"))
        self._preferred = 0

    @staticmethod
    def _sleep(seconds: float) -> None:
        """The pause between rounds of replicas (a seam for tests)."""
        time.sleep(seconds)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            from raftctl.tls import client_context

            self._ssl = client_context(self.ca)
        return self._ssl

    def urlopen(self, req: urllib.request.Request, timeout: float | None) -> Any:
        """urllib's urlopen, verifying https:// peers with this client's CA."""
        ctx = self.ssl_context if req.full_url.startswith("https://") else None
        try:
            return urllib.request.urlopen(req, timeout=timeout, context=ctx)
        except (urllib.error.URLError, OSError) as exc:
            from raftctl.tls import is_verify_error

            if not is_verify_error(exc):
                raise
            reason = getattr(exc, "reason", exc)
            hint = ("pass the cluster's CA with --tls-ca or RAFTCTL_CA_CERT" if self.ca is None
                    else f"{self.ca} is not the CA that signed it")
            raise ApiError(f"TLS: certificate verify failed for {req.full_url.split('/v1')[0]}: "
                           f"{getattr(reason, 'verify_message', None) or reason}; {hint}",
                           field="--tls-ca", code="tls_verify_failed") from None

    def request(self, method: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """JSON in, JSON out. Writes carry one X-Request-Id across retries, so a retry never applies twice."""
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        upload = body if isinstance(body, Upload) else None
        data = json.dumps(body).encode() if body is not None and upload is None else None
        headers = {"Accept": "application/json", "X-Request-Id": uuid.uuid4().hex}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if upload is not None:
            headers["Content-Type"] = upload.content_type
            headers["Content-Length"] = str(os.path.getsize(upload.path))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        deadline = time.monotonic() + self.retry_for
        last: Exception | None = None
        attempt = 0
        while True:
            server = self.servers[(self._preferred + attempt) % len(self.servers)]
            stream = open(upload.path, "rb") if upload is not None else None
            req = urllib.request.Request(server + path, data=stream or data, method=method, headers=headers)
            try:
                with self.urlopen(req, timeout or self.timeout) as resp:
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
            finally:
                if stream is not None:
                    stream.close()
            attempt += 1
            if time.monotonic() > deadline:
                raise Unavailable(f"no replica answered ({', '.join(self.servers)}): {last}") from None
            if attempt % len(self.servers) == 0:
                self._sleep(min(round_pause(attempt // len(self.servers)), max(deadline - time.monotonic(), 0.0)))

    # -- image blobs -----------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        """Whether the replica that answers holds blob ``digest`` (HEAD: it does not ask its peers)."""
        try:
            self.request("HEAD", f"/v1/images/blobs/{digest}")
            return True
        except ApiError as exc:
            if exc.http_status == 404:
                return False
            raise

    def push_blob(self, digest: str, path: str) -> dict[str, Any]:
        """Stream the file at ``path`` as blob ``digest``; the replica verifies the digest and copies
        the blob to a majority of replicas before it answers."""
        return self.request("PUT", f"/v1/images/blobs/{digest}", Upload(path), timeout=max(self.timeout, 120.0))

    # -- binary downloads ------------------------------------------------------------------
    def download(self, path: str, timeout: float = 60.0, accept: str = "application/cbor") -> bytes:
        """GET ``path`` as bytes from the first replica that answers (a snapshot is binary CBOR)."""
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        deadline = time.monotonic() + self.retry_for
        last: Exception | None = None
        rounds = 0
        while True:
            for server in self.servers:
                req = urllib.request.Request(server + path, headers=headers, method="GET")
                try:
                    with self.urlopen(req, timeout) as resp:
                        return resp.read()
                except urllib.error.HTTPError as exc:
                    payload = _error_payload(exc)
                    err = ApiError(payload.get("message", str(exc)), code=payload.get("code", "error"),
                                   field=payload.get("field"), http_status=exc.code)
                    if exc.code not in RETRYABLE:
                        raise err from None
                    last = err
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                    last = exc
            if time.monotonic() > deadline:
                raise Unavailable(f"no replica answered ({', '.join(self.servers)}): {last}")
            rounds += 1
            self._sleep(min(round_pause(rounds), max(deadline - time.monotonic(), 0.0)))


def _error_payload(exc: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        data = json.loads(exc.read() or b"{}")
        return data.get("error") or {}
    except Exception:
        return {"message": f"HTTP {exc.code} {exc.reason}"}
