"""A loopback HTTP/1.1 proxy that can lose the reply of chosen requests, for fault-injection tests.

Why: the hard failure of object-store writes is not "the request failed" but "the request reached S3 and
was performed, yet the client never saw the reply" (a reset connection, a timeout); the client then retries
a write that already happened. moto cannot fake that, so ``DroppingProxy`` sits between the client and
moto's server: for a request chosen by ``drop_reply`` it forwards the whole request, reads the whole reply,
and then resets the client's connection instead of passing the reply on. All else is relayed byte for byte
(signatures stay valid), with keep-alive: HTTP/1.1 message boundaries are parsed (Content-Length, chunked,
no body for HEAD/1xx/204/304, else up to EOF). moto's werkzeug server closes its connection after every
reply; the proxy then drops that hop-by-hop ``Connection: close`` and keeps the client's connection open, as
real S3 would, so clients reuse connections as they do in production. Whole messages are held in memory
(test-sized objects only).

    with DroppingProxy("127.0.0.1", moto_port) as proxy:      # proxy.url == "http://127.0.0.1:<port>"
        proxy.drop_reply(lambda method, path: method == "PUT" and path.endswith("/key"))
        ...
        assert len(proxy.performed_and_dropped) == 1

One thread per client connection, one upstream connection per client connection; every socket operation
has a timeout, and ``stop()`` closes every socket and joins every thread.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from typing import Callable

_MAX_LINE = 65536


def _read_head(f) -> list[bytes] | None:
    """Start line and header lines, raw, up to and with the blank line; None at EOF before a message."""
    lines: list[bytes] = []
    while True:
        line = f.readline(_MAX_LINE + 1)
        if not line:
            if lines:
                raise ConnectionError("EOF inside a message head")
            return None
        if len(line) > _MAX_LINE:
            raise ValueError("header line too long")
        if not lines and line in (b"\r\n", b"\n"):
            continue  # stray empty lines before a message are allowed (RFC 9112 2.2)
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return lines


def _headers(head: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head[1:-1]:
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ConnectionError("EOF inside a message body")
    return data


def _read_body(f, headers: dict[str, str], until_eof: bool) -> bytes:
    """The body exactly as framed on the wire (chunk sizes and trailers kept)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            line = f.readline(_MAX_LINE + 1)
            if not line.endswith(b"\n"):
                raise ConnectionError("bad chunk-size line")
            parts.append(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            parts.append(_read_exact(f, size + 2))  # data + CRLF
        while True:  # trailer section, ends with an empty line
            line = f.readline(_MAX_LINE + 1)
            if not line.endswith(b"\n"):
                raise ConnectionError("EOF in chunked trailers")
            parts.append(line)
            if line in (b"\r\n", b"\n"):
                return b"".join(parts)
    if "content-length" in headers:
        return _read_exact(f, int(headers["content-length"].split(",")[0]))
    return f.read() if until_eof else b""


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback


class DroppingProxy:
    """HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream_host:upstream_port`` (loopback only)."""

    def __init__(self, upstream_host: str, upstream_port: int, timeout: float = 30.0):
        if not _is_loopback(upstream_host):
            raise ValueError(f"upstream must be a loopback address, not {upstream_host!r}")
        self.upstream = (upstream_host, upstream_port)
        self.timeout = timeout
        self.url: str | None = None
        self.requests: list[str] = []  # every request line seen, as "METHOD target HTTP/1.1"
        self.performed_and_dropped: list[str] = []  # request lines performed upstream whose reply was lost
        self.connections = 0  # client connections accepted
        self._rules: list[list] = []  # [predicate, times left]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None

    # -- public API -------------------------------------------------------------------------------------
    def start(self) -> str:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # so the accept loop sees stop()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._spawn(self._accept_loop)
        return self.url

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            socks, threads = list(self._sockets), list(self._threads)
        for s in socks:  # shutdown wakes threads blocked in recv; they close their own sockets
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._listener is not None:
            self._listener.close()
        for t in threads:
            t.join(timeout=5)

    def drop_reply(self, predicate: Callable[[str, str], bool], times: int = 1) -> None:
        """Lose the reply of the next ``times`` requests for which ``predicate(method, path)`` is true."""
        with self._lock:
            self._rules.append([predicate, times])

    def __enter__(self) -> "DroppingProxy":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------------
    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="dropping-proxy")
        with self._lock:
            self._threads.append(t)
        t.start()

    def _track(self, s: socket.socket) -> socket.socket:
        s.settimeout(self.timeout)
        with self._lock:
            self._sockets.add(s)
        return s

    def _close(self, s: socket.socket | None, reset: bool = False) -> None:
        if s is None:
            return
        with self._lock:
            self._sockets.discard(s)
        if reset:  # linger 0: close() sends RST, the client sees "connection reset by peer"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    def _should_drop(self, method: str, path: str) -> bool:
        with self._lock:
            for rule in self._rules:
                if rule[1] > 0 and rule[0](method, path):
                    rule[1] -= 1
                    return True
        return False

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            self._spawn(self._serve, self._track(client))

    def _connect_upstream(self) -> socket.socket:
        return self._track(socket.create_connection(self.upstream, timeout=self.timeout))

    def _serve(self, client: socket.socket) -> None:
        cf = client.makefile("rb")
        upstream = uf = None
        reset = idle = False
        try:
            while not self._stopping.is_set():
                idle = True  # between messages: a timeout or EOF here ends the connection quietly
                head = _read_head(cf)
                if head is None:
                    return
                idle = False
                request_line = head[0].decode("latin-1").strip()
                method, path = request_line.split()[:2]
                headers = _headers(head)
                if headers.get("expect", "").lower() == "100-continue":
                    # answer it here and send upstream the request without it, body and all
                    head = [line for line in head if not line.lower().startswith(b"expect:")]
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                request = b"".join(head) + _read_body(cf, headers, until_eof=False)
                with self._lock:
                    self.requests.append(request_line)

                if upstream is None:
                    upstream = self._connect_upstream()
                    uf = upstream.makefile("rb")
                upstream.sendall(request)
                response = b""
                while True:  # skip past interim 1xx replies, keeping them for the client
                    rhead = _read_head(uf)
                    if rhead is None:
                        raise ConnectionError("upstream closed without a reply")
                    status = int(rhead[0].split()[1])
                    if not 100 <= status < 200:
                        break
                    response += b"".join(rhead)
                rheaders = _headers(rhead)
                no_body = method == "HEAD" or status in (204, 304)
                body = b"" if no_body else _read_body(uf, rheaders, until_eof=True)
                framed = no_body or "content-length" in rheaders or "chunked" in rheaders.get("transfer-encoding", "")
                if not framed or "close" in rheaders.get("connection", "").lower():
                    uf.close()  # upstream is done with this connection (werkzeug closes after every reply)
                    self._close(upstream)
                    upstream = uf = None
                    if framed:  # Connection is hop-by-hop: the client's connection to us stays open
                        rhead = [line for line in rhead if not line.lower().startswith(b"connection:")]
                response += b"".join(rhead) + body

                if self._should_drop(method, path):
                    with self._lock:
                        self.performed_and_dropped.append(request_line)
                    reset = True
                    return
                client.sendall(response)
                if not framed or "close" in headers.get("connection", "").lower():
                    return
        except (OSError, ValueError, IndexError):
            reset = not idle  # timeouts, resets, garbage mid-message: give up on this connection
        finally:
            cf.close()
            if uf is not None:
                uf.close()
            self._close(upstream)
            self._close(client, reset=reset)
