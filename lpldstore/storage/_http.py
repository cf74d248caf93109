"""HTTP(S) reads with timeouts and a size cap per response (through fsspec and aiohttp).

fsspec's HTTP file system reads every response whole and aiohttp waits forever by default, so a
stalled or hostile server could hang a reader or send gigabytes for a 2 KB chunk. Every session
lpldstore opens gets connect, read and whole-request timeouts (:data:`CONNECT_TIMEOUT_S`,
:data:`READ_TIMEOUT_S`, :data:`TOTAL_TIMEOUT_S`;
``storage_options={"client_kwargs": {"timeout": aiohttp.ClientTimeout(...)}}`` overrides them)
and a response class that refuses a body larger than the bound of the key being read
(``lpldstore.storage._safe.read_limit``), or :data:`MIN_RESPONSE_CAP` when that is larger (a zip
read over HTTP fetches blocks of a few MB). Imported only when a store is opened over HTTP
(aiohttp comes with the ``http`` extra).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from lpldstore.errors import StoreDamagedError
from lpldstore.storage._safe import read_limit

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MIN_RESPONSE_CAP",
    "READ_TIMEOUT_S",
    "TOTAL_TIMEOUT_S",
    "CappedResponse",
    "http_options",
]

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
# A whole request (a server that sends a byte every 29 s never trips the read timeout).
TOTAL_TIMEOUT_S = 600.0
MIN_RESPONSE_CAP = 16 << 20


class CappedResponse(aiohttp.ClientResponse):
    """A response whose ``read`` stops at the cap instead of taking whatever the server sends."""

    async def read(self) -> bytes:
        if self._body is None:
            cap = max(read_limit.get(), MIN_RESPONSE_CAP)
            declared = self.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > cap:
                self.close()
                raise StoreDamagedError(
                    f"{self.url}: the server announces {int(declared):,} bytes; at most {cap:,} are read for "
                    "this key. Refused without reading it."
                )
            parts, size = [], 0
            while chunk := await self.content.read(1 << 20):
                size += len(chunk)
                if size > cap:
                    self.close()
                    raise StoreDamagedError(
                        f"{self.url}: the server sent more than {cap:,} bytes for this key; refused."
                    )
                parts.append(chunk)
            self._body = b"".join(parts)
        return await super().read()


async def _capped_client(**kwargs: Any) -> aiohttp.ClientSession:
    kwargs.setdefault(
        "timeout",
        aiohttp.ClientTimeout(
            total=TOTAL_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
        ),
    )
    kwargs["response_class"] = CappedResponse
    return aiohttp.ClientSession(**kwargs)


def http_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for fsspec's HTTP file system, with lpldstore's capped, timed client."""
    return {"get_client": _capped_client, **options}
