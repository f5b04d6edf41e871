"""`MockHttp`: what httpx's MockTransport is to httpx, for the standard-library HTTP the Google clients
speak (`shared.core.http.Http`). A handler takes the request as an `httpx.Request` and answers an
`httpx.Response`, so that tests script and inspect Google's traffic as they do Novita's; an httpx
transport error it raises stands for the network's fault, and reaches the client as TransportError."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any

import httpx

from shared.core.http import Response, Timeout, TransportError


class MockHttp:
    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler
        self.timeouts: list[Timeout | None] = []

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | memoryview | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | None = None,
    ) -> Response:
        self.timeouts.append(timeout)
        body = None if content is None else bytes(content)
        request = httpx.Request(method, url, params=params, json=json, content=body, headers=headers)
        try:
            answer = self.handler(request)
            data = answer.read()
        except httpx.TransportError as exc:
            raise TransportError(repr(exc)) from exc
        kept = Message()
        for name, value in answer.headers.multi_items():
            kept[name] = value
        return Response(answer.status_code, kept, data)
