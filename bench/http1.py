"""A minimal HTTP/1.1 keep-alive client on asyncio streams, so that the benchmark's client costs little CPU."""

from __future__ import annotations

import asyncio
import contextlib

HEADER_END = b"\r\n\r\n"
CRLF = b"\r\n"
BODYLESS_STATUSES = frozenset({204, 304})


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 that this client understands."""


ERRORS = (OSError, EOFError, asyncio.LimitOverrunError, ProtocolError)
"""What a failed request raises: connection and timeout errors, a response cut short, or one not understood."""


def header_block(host: str, port: int, headers: dict[str, str]) -> bytes:
    """The header lines that every request of a connection carries, built once."""
    lines = [f"Host: {host}:{port}"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def request_bytes(method: bytes, target: bytes, headers: bytes, body: bytes) -> bytes:
    """A whole request message; `headers` is a connection's `header_block`."""
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n", headers, length, CRLF, body))


class Connection:
    """One persistent connection to host:port, opened on first use and again after the server closed it.

    Requests on one connection must not overlap: give each concurrent worker its own connection.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str], timeout: float) -> None:
        self.host = host
        self.port = port
        self.headers = header_block(host, port, headers)
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        # Responses read on the current connection: a reused one may have been closed by the server idly.
        self.served = 0

    async def request(self, method: bytes, target: bytes, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request and return the response's status and body."""
        message = request_bytes(method, target, self.headers, body)
        async with asyncio.timeout(self.timeout):
            try:
                return await self.exchange(message)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                # A kept-alive connection that the server closed before reading the request: it was not
                # processed, so sending it once more on a fresh connection is safe.
                if not (self.served and stale(exc)):
                    raise
            return await self.exchange(message)

    async def exchange(self, message: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.served = 0
        reader, writer = self.reader, self.writer
        try:
            writer.write(message)
            await writer.drain()
            status, body, keep_alive = await read_response(reader)
        except BaseException:
            self.close()
            raise
        self.served += 1
        if not keep_alive:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def aclose(self) -> None:
        writer = self.writer
        self.close()
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def stale(exc: BaseException) -> bool:
    """Whether the connection failed before the server sent any byte of a response."""
    return isinstance(exc, ConnectionError) or not exc.partial  # type: ignore[attr-defined]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the connection stays open, of the next final response on `reader`."""
    while True:
        status, content_length, chunked, keep_alive = parse_head(await reader.readuntil(HEADER_END))
        if not 100 <= status < 200:
            break
    if chunked:
        return status, await read_chunked(reader), keep_alive
    if content_length is not None:
        return status, await reader.readexactly(content_length), keep_alive
    if status in BODYLESS_STATUSES:
        return status, b"", keep_alive
    # Neither length nor chunks: the body runs to the end of the connection.
    return status, await reader.read(), False


def parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """Status, Content-Length, whether chunked, and whether keep-alive, from a status line and headers."""
    lines = head[:-4].split(CRLF)
    status_line = lines[0]
    if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:100]!r}")
    http11 = status_line.startswith(b"HTTP/1.1")
    content_length: int | None = None
    chunked = False
    connection: set[bytes] = set()
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            content_length = int(value)
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding: {value.strip()!r}")
            chunked = True
        elif name == b"connection":
            connection.update(token.strip().lower() for token in value.split(b","))
    keep_alive = b"close" not in connection if http11 else b"keep-alive" in connection
    return int(status_line[9:12]), content_length, chunked, keep_alive


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size_line = await reader.readuntil(CRLF)
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size line: {size_line[:100]!r}") from None
        if size == 0:
            break
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != CRLF:
            raise ProtocolError("chunk not followed by CRLF")
        chunks.append(chunk[:-2])
    while await reader.readuntil(CRLF) != CRLF:
        pass  # trailer fields, which this client does not need
    return b"".join(chunks)
