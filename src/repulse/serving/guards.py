"""ASGI middleware that runs before any body parsing: the API key check and the request body size limit.

Plain ASGI (not FastAPI dependencies) so a request without a key or with a huge body is answered before a byte
of it is parsed, and the size limit also holds for chunked bodies that declare no Content-Length.
"""

from __future__ import annotations

import hmac
import json

# /health stays open for liveness probes (it reveals the model name, device and queue depth, nothing more);
# the docs pages describe the API only and browsers cannot send the key header to them.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


async def send_json_error(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key from 'Authorization: Bearer KEY' or 'X-API-Key: KEY' (first found)."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None


class APIKeyMiddleware:
    """401 unless the request carries the key (constant-time comparison); OPEN_PATHS stay open."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            key = presented_key(scope["headers"])
            if key is None or not hmac.compare_digest(key, self.key):
                why = "missing API key" if key is None else "wrong API key"
                hint = " (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')"
                await send_json_error(send, 401, why + hint, [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 when the declared Content-Length or the bytes actually received exceed max_bytes.

    The body (at most max_bytes) is read here and replayed to the app, which is why the limit must stay modest.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = f"request body larger than --max_body_bytes ({self.max_bytes} bytes)"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_json_error(send, 400, "invalid Content-Length header")
                return
            if int(declared) > self.max_bytes:
                await send_json_error(send, 413, too_large)
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_json_error(send, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay(b"".join(chunks), receive), send)


def replay(body: bytes, receive):
    """A `receive` that returns the already-read body once, then defers to the real one (disconnects)."""
    sent = False

    async def receive_again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
