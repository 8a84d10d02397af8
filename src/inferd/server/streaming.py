"""Server-sent events, merging several requests' streams, and aborting work when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from inferd.server.errors import APIError

T = TypeVar("T")
logger = logging.getLogger("inferd.server")
SSE_DONE = b"data: [DONE]\n\n"
_CLIENT_CLOSED_REQUEST = 499


def sse_event(payload: dict[str, Any]) -> bytes:
    """One SSE event ``data: {json}\\n\\n``."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def sse_with_errors(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass ``events`` through; an error after the stream started becomes an error event, then ``[DONE]``."""
    try:
        async for event in events:
            yield event
    except APIError as e:
        yield sse_event(e.to_dict())
        yield SSE_DONE
    except Exception:
        logger.exception("Unexpected error while streaming a response")
        yield sse_event(APIError(500, "Internal server error while streaming; see the server log.").to_dict())
        yield SSE_DONE
    finally:
        await events.aclose()  # type: ignore[attr-defined]


class SSEResponse(StreamingResponse):
    """A text/event-stream response that always closes its event generator (so the engine request is aborted),
    whether the stream ended, the client disconnected or the send failed."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(
            sse_with_errors(events), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def merge_async_iterators(iterators: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of all ``iterators`` as they come, tagged with the iterator's index; closing this closes them all."""
    if len(iterators) == 1:
        async for item in iterators[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    done_marker = object()

    async def pump(i: int, it: AsyncIterator[T]) -> None:
        try:
            async for item in it:
                await queue.put((i, item, None))
            await queue.put((i, done_marker, None))
        except BaseException as e:  # includes cancellation: the consumer learns the pump ended
            await queue.put((i, done_marker, e))
            if isinstance(e, asyncio.CancelledError):
                raise

    tasks = [asyncio.create_task(pump(i, it)) for i, it in enumerate(iterators)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item, err = await queue.get()
            if item is done_marker:
                if err is not None and not isinstance(err, asyncio.CancelledError):
                    raise err
                remaining -= 1
                continue
            yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for it in iterators:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T | Response:
    """Await ``work``; if the client disconnects first, cancel it (aborting its engine requests) and return 499."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return Response(status_code=_CLIENT_CLOSED_REQUEST)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
