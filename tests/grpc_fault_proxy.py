"""A loopback gRPC proxy that injects faults into the calls a client makes to a real server.

The inference server cannot be told to answer UNAVAILABLE or RESOURCE_EXHAUSTED, or to be slow, on
request; a proxy between our client and it can. Every call is forwarded as raw bytes (no protobuf
decoding: the proxy works for any service) unless the plan says otherwise for the n-th call of a
method. An error from the server itself (e.g. UNAVAILABLE while it restarts) is passed back as is.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

# For the n-th call (1-based) of a method, e.g. "ModelInfer":
#   None                  forward unchanged
#   ("status", "UNAVAILABLE")   answer with this gRPC status code, without forwarding
#   ("delay", seconds)    wait, then forward (a slow server: the client's deadline may pass first)
#   ("call", fn)          run fn() (e.g. kill the server), then forward
GrpcFault = tuple[str, Any] | None
GrpcPlan = Callable[[str, int], GrpcFault]

_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class GrpcFaultProxy:
    """``with GrpcFaultProxy("127.0.0.1:8001", plan) as proxy: proxy.port`` - point the client at it."""

    def __init__(self, upstream: str, plan: GrpcPlan) -> None:
        self.plan = plan
        self.calls: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(upstream, options=_UNLIMITED)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=_UNLIMITED)
        self._server.add_generic_rpc_handlers([_Handler(self)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def __enter__(self) -> GrpcFaultProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)
        self._channel.close()

    def _fault(self, method: str) -> GrpcFault:
        with self._lock:
            self.calls[method] += 1
            fault = self.plan(method, self.calls[method])
            if fault is not None:
                self.faults[f"{method} {fault[0]}"] += 1
            return fault

    def forward(self, full_method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        method = full_method.rsplit("/", 1)[-1]
        fault = self._fault(method)
        if fault is not None and fault[0] == "status":
            context.abort(getattr(grpc.StatusCode, fault[1]), f"{fault[1]} injected by GrpcFaultProxy")
        if fault is not None and fault[0] == "delay":
            time.sleep(fault[1])
        if fault is not None and fault[0] == "call":
            fault[1]()
        remaining = context.time_remaining()  # a huge number when the client set no deadline
        timeout = remaining if remaining is not None and remaining < 86_400 else None
        call = self._channel.unary_unary(full_method)  # bytes in, bytes out
        try:
            return call(request, timeout=timeout, metadata=context.invocation_metadata())
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")
            raise  # abort raises; this keeps type checkers content


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: GrpcFaultProxy) -> None:
        self.proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self.proxy.forward(method, request, context)
        )
