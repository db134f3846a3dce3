"""The mocks fetch a media message's link, as Meta does before it delivers the message.

Meta downloads what a `link` points at after it accepted the send (the answer is a 200 either
way); a link it cannot use fails the message later, by webhook (WhatsApp 131053 "Media upload
error"). So a presigned URL that expired, a host the provider cannot reach or a slow file
server shows up here as it would in production. A fetch is a GET answered 200 whose whole body
arrives within the timeout (read and thrown away, at most `max_bytes`: Meta's largest media,
a 100 MB document); at most `max_concurrent` at once, the others wait their turn. aiohttp's
client: the simulators are not on the adapters' hot path, and it follows redirects as Meta's
fetcher does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp

_CHUNK_BYTES = 64 * 1024
MAX_MEDIA_BYTES = 100 * 1024 * 1024


class MediaFetcher:
    def __init__(
        self, *, timeout_s: float, max_concurrent: int = 16, max_bytes: int = MAX_MEDIA_BYTES
    ) -> None:
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[MediaFetcher]:
        async with aiohttp.ClientSession() as session:
            self._session = session
            try:
                yield self
            finally:
                self._session = None

    async def problem(self, url: str) -> str | None:
        """Why the media at `url` cannot be fetched, or None once it was. Never quotes the
        URL (a presigned link carries its signature)."""
        if self._session is None:
            raise RuntimeError("MediaFetcher.problem outside `open()`")
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await self._get(self._session, url)
            except TimeoutError:
                return f"no answer within {self._timeout_s:g}s"
            except (aiohttp.ClientError, ValueError) as exc:
                return type(exc).__name__

    async def _get(self, session: aiohttp.ClientSession, url: str) -> str | None:
        async with session.get(url) as response:
            if response.status != 200:
                return f"HTTP {response.status}"
            size = 0
            async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                size += len(chunk)
                if size > self._max_bytes:
                    return f"larger than {self._max_bytes} bytes"
        return None
