"""Test helpers for the Elasticsearch sink: the noida-db ES emulator process and a fault proxy.

No Elasticsearch server can be installed on these machines, so integration tests run against
``noida-db`` (an ES-compatible emulator, one isolated process per test module) unless ``ES_URL``
names a real cluster. noida-db never answers 429 and cannot be made to drop connections, so the
retry paths are exercised through :class:`BulkFaultProxy`, a small loopback HTTP proxy that
forwards everything to the real target and injects faults into ``_bulk`` requests only.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from embedding_pipeline.local.es_emulator import EsEmulator, free_port  # noqa: F401 - re-exported for tests

# --------------------------------------------------------------------------------------------------
# Fault-injecting proxy
# --------------------------------------------------------------------------------------------------

# A fault decides, for the n-th _bulk request (1-based), what happens to it:
#   None                    forward unchanged
#   ("status", code)        answer the whole request with this HTTP status
#   ("drop", None)          close the connection without an answer (a connection reset)
#   ("drop_after", None)    forward the request, then close the connection without an answer: the
#                           cluster applied the bulk but the client never hears of it
#   ("items", predicate)    reject the items for which predicate(item_index) is true with 429
#                           es_rejected_execution_exception; forward the others and merge answers
#   ("hold", Hold)          keep the request in flight (Hold.seen is set) until Hold.release, then
#                           forward it and answer whoever is still listening: a client killed while
#                           waiting leaves a bulk that the cluster applies after it died
Fault = tuple[str, Any] | None
FaultPlan = Callable[[int], Fault]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


@dataclass
class Hold:
    """The events of a ``("hold", hold)`` fault: ``seen`` when the request arrived, ``release`` to
    let it through (waits at most ``timeout_s``)."""

    seen: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    timeout_s: float = 300.0


def first_n(n: int, fault: Fault) -> FaultPlan:
    """``fault`` for the first ``n`` bulk requests, then pass-through."""
    return lambda number: fault if number <= n else None


def always(fault: Fault) -> FaultPlan:
    return lambda number: fault


def reject_all_items() -> Fault:
    return ("items", lambda index: True)


def reject_items_where(predicate: Callable[[int], bool]) -> Fault:
    return ("items", predicate)


def _split_bulk(body: bytes) -> list[tuple[bytes, bytes | None]]:
    """NDJSON bulk body -> [(action line, source line or None for deletes)]."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    ops: list[tuple[bytes, bytes | None]] = []
    i = 0
    while i < len(lines):
        action = lines[i]
        if next(iter(json.loads(action))) == "delete":
            ops.append((action, None))
            i += 1
        else:
            ops.append((action, lines[i + 1]))
            i += 2
    return ops


def _rejected_item(action_line: bytes) -> dict[str, Any]:
    op, meta = next(iter(json.loads(action_line).items()))
    return {
        op: {
            "_index": meta.get("_index"),
            "_id": meta.get("_id"),
            "status": 429,
            "error": {
                "type": "es_rejected_execution_exception",
                "reason": "rejected execution of coordinating operation [injected by BulkFaultProxy]",
            },
        }
    }


class BulkFaultProxy:
    """Loopback HTTP proxy in front of ``upstream`` that injects faults into ``_bulk`` requests
    (or the POST/PUT requests of another ``endpoint``, e.g. ``/_aliases``).

    Everything else passes through unchanged, so a client pointed at ``proxy.url`` works as usual.
    ``https`` upstreams (a real cluster) are reached with ``ca_certs`` (or unverified when absent).
    """

    def __init__(
        self, upstream: str, plan: FaultPlan, ca_certs: str | None = None, endpoint: str = "/_bulk"
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.plan = plan
        self.endpoint = endpoint
        self.ca_certs = ca_certs
        self.bulk_requests = 0
        self.faults_injected = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval: shutdown() waits for it, 0.5 s by default on every test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="bulk-fault-proxy", daemon=True
        )

    def __enter__(self) -> BulkFaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self.upstream.hostname or "127.0.0.1", self.upstream.port
        if self.upstream.scheme == "https":
            context = ssl.create_default_context(cafile=self.ca_certs)
            if not self.ca_certs:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(host, port or 443, timeout=60, context=context)
        return http.client.HTTPConnection(host, port or 80, timeout=60)

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None):
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _next_bulk_fault(self) -> Fault:
        with self._lock:
            self.bulk_requests += 1
            fault = self.plan(self.bulk_requests)
            if fault is not None:
                self.faults_injected += 1
            return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_ProxyHandler,), {"proxy": self})


class _ProxyHandler(BaseHTTPRequestHandler):
    """Relays requests to the emulator, injecting the proxy's planned faults into bulk requests."""

    proxy: BulkFaultProxy

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        is_bulk = self.command in ("POST", "PUT") and urlsplit(self.path).path.endswith(self.proxy.endpoint)
        fault = self.proxy._next_bulk_fault() if is_bulk else None
        if fault is None:
            self._answer(*self.proxy.forward(self.command, self.path, headers, body))
        else:
            self._inject(fault, body or b"", headers)

    def _inject(self, fault: Any, body: bytes, headers: dict[str, str]) -> None:
        if fault[0] == "hold":
            fault[1].seen.set()
            fault[1].release.wait(fault[1].timeout_s)
            answer = self.proxy.forward(self.command, self.path, headers, body)
            with suppress(OSError):  # the client may be gone
                self._answer(*answer)
        elif fault[0] in ("drop", "drop_after"):
            if fault[0] == "drop_after":
                self.proxy.forward(self.command, self.path, headers, body)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif fault[0] == "status":
            error = {
                "error": {"type": "injected_fault", "reason": f"{fault[1]} injected"},
                "status": fault[1],
            }
            self._answer_json(fault[1], error)
        else:
            self._partial(fault[1], body, headers)

    def _partial(self, predicate: Callable[[int], bool], body: bytes, headers: dict[str, str]) -> None:
        ops = _split_bulk(body)
        keep = [i for i in range(len(ops)) if not predicate(i)]
        forwarded: list[dict[str, Any]] = []
        took = 0
        if keep:
            sub = b"".join(
                ops[i][0] + b"\n" + (ops[i][1] + b"\n" if ops[i][1] is not None else b"") for i in keep
            )
            status, _, raw = self.proxy.forward(self.command, self.path, headers, sub)
            if status != 200:
                self._answer_json(status, json.loads(raw))
                return
            answer = json.loads(raw)
            forwarded, took = answer["items"], answer.get("took", 0)
        answers, kept = iter(forwarded), set(keep)
        items = [next(answers) if i in kept else _rejected_item(ops[i][0]) for i in range(len(ops))]
        self._answer_json(200, {"took": took, "errors": True, "items": items})

    def _answer_json(self, status: int, payload: dict[str, Any]) -> None:
        headers = [("Content-Type", "application/json"), ("X-Elastic-Product", "Elasticsearch")]
        self._answer(status, headers, json.dumps(payload).encode())

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay
