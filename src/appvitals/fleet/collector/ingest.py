"""`POST /v1/ingest` (SPEC section 3): who may write, the body read as it arrives, the answer.

Per request: body chunks -> decompression (a compressed body is checked whole before any
of its lines is used) -> line splitting -> `Chunker` (decoding, chunks of `chunk_lines`
lines) -> the writer's queue. A request is answered only after every one of its chunks is
committed, so a `200` means its accepted lines are durable. When the client goes away, the
work on its body stops at the next piece (a megabyte at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from appvitals.fleet.collector.body import (
    BadCompression,
    BodyTooLarge,
    Decompressor,
    LineSplitter,
    LineTooLong,
    UnsupportedEncoding,
)
from appvitals.fleet.collector.chunker import Chunker, RequestState
from appvitals.fleet.collector.writer import Overloaded, StorageFailure, Writer
from appvitals.httpauth import Tokens, cross_site_browser, json_error, unauthorized

# Content-Type values a browser page cannot send to another site without a preflight are
# fine; the CORS-safelisted ones (text/plain, form encodings) are refused. None: a program.
_BODY_TYPES = {
    "application/x-ndjson", "application/ndjson", "application/jsonl", "application/jsonlines",
    "application/x-jsonlines", "application/json", "application/gzip", "application/x-gzip",
    "application/zstd", "application/octet-stream",
}


IN_PROCESS_SLICE = 64 << 10  # plain bytes decoded in the event loop between two looks around


class IngestResult(msgspec.Struct):
    """The body of a 200 answer to POST /v1/ingest."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict] = []


class BodyReader:
    """A request's body from the ASGI channel, one message ahead of its use, so a client that
    hangs up is noticed (`gone`) while its body is still being worked on."""

    def __init__(self, request: Request, idle: float):
        self._receive = request.receive
        self.idle = idle
        self.gone = False
        self._next: asyncio.Future | None = None
        self._ended = False

    def _ask(self) -> None:
        self._next = asyncio.ensure_future(self._receive())
        self._next.add_done_callback(self._seen)

    def _seen(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None and future.result()["type"] == "http.disconnect":
            self.gone = True

    def check(self) -> None:
        """Raise ClientDisconnect when the client went away."""
        if self.gone:
            raise ClientDisconnect()

    async def chunks(self) -> AsyncIterator[bytes | None]:
        """Body chunks; None after `idle` seconds without data, so slow streams still commit."""
        while not self._ended:
            if self._next is None:
                self._ask()
            assert self._next is not None
            done, _ = await asyncio.wait((self._next,), timeout=self.idle)
            if not done:
                yield None
                continue
            message, self._next = self._next.result(), None
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            body = message.get("body", b"")
            if not message.get("more_body", False):
                self._ended = True
            self._ask()  # the next message, or after the body the client hanging up
            if body:
                yield body

    def close(self) -> None:
        """Stop listening (the answer is about to be sent)."""
        if self._next is not None and not self._next.done():
            self._next.cancel()


class IngestRoute:
    """POST /v1/ingest."""

    def __init__(self, writer: Writer, tokens: Tokens, *, chunk_lines: int, max_line_bytes: int,
                 flush_interval: float, max_body_bytes: int, max_body_ratio: float,
                 allowed_origins: Iterable[str] = ()):
        self.writer = writer
        self.tokens = tokens
        self.chunk_lines = chunk_lines
        self.max_line_bytes = max_line_bytes
        self.flush_interval = flush_interval
        self.max_body_bytes = max_body_bytes
        self.max_body_ratio = max_body_ratio
        self.allowed_origins = tuple(allowed_origins)

    async def endpoint(self, request: Request) -> Response:
        """Answer one ingest request and count it."""
        started = time.perf_counter()
        response = await self._handle(request)
        self.writer.metrics.answered(response.status_code, time.perf_counter() - started)
        return response

    def _busy(self, why: str, **counts) -> Response:
        self.writer.metrics.overloaded.inc()
        return json_error(503, f"overloaded: {why}; retry later", {"Retry-After": str(self.writer.retry_after)},
                          **counts)

    def refused(self, request: Request) -> Response | None:
        """The answer to a request that may not write, or None."""
        why = cross_site_browser(request, self.allowed_origins)
        if why is not None:
            return json_error(403, why)
        if not self.tokens.allows(request):
            return unauthorized()
        kind = request.headers.get("content-type")
        if kind is not None and kind.partition(";")[0].strip().lower() not in _BODY_TYPES:
            return json_error(415, f"Content-Type {kind[:60]!r} is not accepted: send application/x-ndjson")
        return None

    async def _handle(self, request: Request) -> Response:
        writer = self.writer
        denied = self.refused(request)
        if denied is not None:
            return denied
        try:
            decompressor = Decompressor(request.headers.get("content-encoding"), max_output=self.max_body_bytes,
                                        max_ratio=self.max_body_ratio)
        except UnsupportedEncoding as exc:
            return json_error(415, str(exc))
        if not writer.running:
            return self._busy("collector is shutting down")
        if writer.full():
            return self._busy("write queue full")

        splitter = LineSplitter(self.max_line_bytes)
        state = RequestState(writer.metrics)
        chunk = Chunker(writer, state, self.chunk_lines)
        reader = BodyReader(request, self.flush_interval)

        async def take(plain: bytes) -> None:
            reader.check()
            if chunk.blocks:  # the decode workers split the lines
                await chunk.add_block(*splitter.feed_block(plain), skipped=splitter.skipped)
                await asyncio.sleep(0)  # let the reader see a client that hung up
                return
            # decoded here, in the event loop: small slices, so other requests and a client
            # that hung up are seen between them (a slice of bad lines costs ~0.1 s at most)
            for start in range(0, len(plain), IN_PROCESS_SLICE):
                await chunk.add(splitter.feed(plain[start:start + IN_PROCESS_SLICE]), splitter.skipped)
                await asyncio.sleep(0)
                reader.check()
                if splitter.too_long:
                    return

        try:
            async with contextlib.aclosing(reader.chunks()) as chunks:
                async for data in chunks:
                    if data is None:  # the client is quiet: commit what we have so far
                        await chunk.flush()
                        continue
                    for plain in decompressor.feed(data):
                        await take(plain)
                        if splitter.too_long:
                            break
                    if splitter.too_long:
                        break
            if not splitter.too_long:
                for plain in decompressor.finish():
                    await take(plain)
                    if splitter.too_long:
                        break
            reader.check()
            await chunk.add(splitter.finish())
            await chunk.flush()
            await chunk.decoded()
            await state.wait()
            splitter.check()
        except LineTooLong as exc:
            await chunk.settle(writer.max_wait)
            return json_error(413, f"line {chunk.line_no + 1}: {exc}", **state.counts())
        except BodyTooLarge as exc:
            await chunk.settle(writer.max_wait)
            return json_error(413, str(exc), **state.counts())
        except BadCompression as exc:
            await chunk.settle(writer.max_wait)
            return json_error(400, str(exc), **state.counts())
        except Overloaded as exc:  # answer now: queued chunks still commit, a retry sees them as duplicates
            chunk.cancel()
            return self._busy(str(exc))
        except ClientDisconnect:
            chunk.cancel()
            return Response(status_code=400)
        finally:
            reader.close()
        if state.failure is not None:
            why = state.failure if isinstance(state.failure, StorageFailure) else f"{type(state.failure).__name__}"
            return self._busy(f"the warehouse cannot store data ({why})", **state.counts())
        body = IngestResult(state.accepted, state.duplicates, state.rejected, state.errors)
        return Response(msgspec.json.encode(body), 200, media_type="application/json")
