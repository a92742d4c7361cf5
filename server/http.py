"""Request decoding and JSON responses shared by the routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tagrun.server.errors import InvalidInput, PayloadTooLarge
from tagrun.server.validation_errors import plain_message

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


async def read_body(request: Request, model: type[T]) -> T:
    """Decode and validate a JSON body; oversized, malformed or mistyped bodies are 4xx."""
    limit: int = request.app.state.config.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    if not body:
        raise InvalidInput("request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(bytes(body), type=model)
    except msgspec.ValidationError as exc:
        raise InvalidInput(plain_message(exc, model)) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("request body is nested too deeply") from None


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work` while the client stays connected; if it goes away first (a killed agent's
    long-poll), cancel `work` and return None, so nothing is handed to a closed socket."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _disconnected(request: Request) -> None:
    # Once the body is read, the server's receive() answers only when the client disconnects.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def query_int(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name}={raw!r} is not an integer") from None
    if not minimum <= value <= maximum:
        raise InvalidInput(
            f"query parameter {name}={value} must be between {minimum} and {maximum}"
        )
    return value


def query_float(request: Request, name: str, default: float, *, maximum: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name}={raw!r} is not a number") from None
    if not 0 <= value <= maximum:  # also refuses nan
        raise InvalidInput(f"query parameter {name}={value} must be between 0 and {maximum:g}")
    return value


def path_int(request: Request, name: str) -> int:
    raw = request.path_params[name]
    # isascii: str.isdigit() also accepts digits int() refuses ("²") or reads ("١" is 1).
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise InvalidInput(f"{name} {raw!r} is not a valid id")
    return int(raw)
