"""`MockHttp`: what httpx's MockTransport is to httpx, for the standard-library HTTP the Google clients
speak (`shared.core.http.KeptAlive`). The request is built as the real one is; instead of going out,
it reaches a handler as an `httpx.Request`, whose `httpx.Response` comes back as the answer. An httpx
transport error the handler raises stands for the network's fault, and reaches the client as
TransportError."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from email.message import Message

import httpx

from shared.core.http import KeptAlive, Request, Response, Timeout, TransportError


class MockHttp(KeptAlive):
    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        super().__init__(ssl.create_default_context(), Timeout(connect=5.0, read=5.0))
        self.handler = handler

    def send(self, request: Request) -> Response:
        body = None if request.body is None else bytes(request.body)
        sent = httpx.Request(request.method, request.url, content=body, headers=request.headers)
        try:
            answer = self.handler(sent)
            data = answer.read()
        except httpx.TransportError as exc:
            raise TransportError(repr(exc)) from exc
        kept = Message()
        for name, value in answer.headers.multi_items():
            kept[name] = value
        return Response(answer.status_code, kept, data)
