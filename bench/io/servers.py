"""Echo and HTTP servers for the I/O benchmarks, one per process.

    python bench/io/servers.py KIND LOOP --addr tcp:127.0.0.1:PORT|unix:/path
        [--tls CERT,KEY]

KIND:
  protocol  asyncio.Protocol: data_received -> transport.write(data)
  streams   asyncio.start_server: reader.read(64 KiB) -> writer.write, await drain()
  buffered  asyncio.BufferedProtocol into a preallocated bytearray:
            buffer_updated(n) -> transport.write(memoryview[:n])
  sock      loop.sock_accept, then per connection a task of sock_recv / sock_sendall
  uvicorn   uvicorn (http='httptools', no access log) serving a minimal ASGI
            app that answers every request with "Hello, world!"
  datagram  create_datagram_endpoint on udp:HOST:PORT: datagram_received ->
            transport.sendto(data, addr)
LOOP: asyncio | uvloop | rloop | ferroloop (bench/workloads.py's make_loop).

--tls serves TLS 1.3 (protocol, streams, buffered, uvicorn) with a server
context made here, the same on every loop: ssl.PROTOCOL_TLS_SERVER, minimum
version TLS 1.3, CERT and KEY loaded; the READY address is then tls:HOST:PORT.

TCP port 0 picks a free port. Prints "READY <addr>" (the address actually
bound) once it accepts connections; runs until its stdin closes (a reader
thread stops the loop through call_soon_threadsafe), SIGINT/SIGTERM or
--max-seconds; then prints one JSON line with its own CPU time,
resource.getrusage(RUSAGE_SELF): {"utime", "stime", "cpu"} in seconds.
bench/io/run.py reads /proc for the CPU used during the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workloads import make_loop  # noqa: E402

LOOPS = ("asyncio", "uvloop", "rloop", "ferroloop")
KINDS = ("protocol", "streams", "buffered", "sock", "uvicorn", "datagram")
READ_SIZE = 64 * 1024  # streams: reader.read(READ_SIZE)
SOCK_READ_SIZE = 256 * 1024  # sock: sock_recv size (asyncio transports read up to 256 KiB too)
BUF_SIZE = 256 * 1024  # buffered: the preallocated receive buffer
HELLO = b"Hello, world!"


def set_nodelay(sock: object) -> None:
    """TCP_NODELAY, as every loop's transports set it; a no-op on Unix sockets."""
    try:
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):  # type: ignore[attr-defined]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        pass


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        set_nodelay(transport.get_extra_info("socket"))

    def data_received(self, data):
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.view = memoryview(bytearray(BUF_SIZE))
        set_nodelay(transport.get_extra_info("socket"))

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        t = self.transport
        t.write(self.view[:nbytes])
        # A loop may keep a reference to the slice instead of copying it when it
        # cannot send it all at once (asyncio's selector transport copies,
        # uvloop may not): refilling the same buffer would then corrupt the
        # echo, so take a fresh one. Rare in ping-pong (only when a socket
        # buffer is full), and the client checks the echo.
        if t.get_write_buffer_size():
            self.view = memoryview(bytearray(BUF_SIZE))


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def streams_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    set_nodelay(writer.get_extra_info("socket"))
    try:
        # Bounded by the connection: the client closes it at the end of its run.
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def sock_handler(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    try:
        while data := await loop.sock_recv(conn, SOCK_READ_SIZE):
            await loop.sock_sendall(conn, data)
    except ConnectionError:
        pass
    finally:
        conn.close()


def listen_socket(addr: str) -> socket.socket:
    """A bound, listening, nonblocking socket for `tcp:HOST:PORT` or `unix:/path`
    (for `udp:HOST:PORT`: a bound datagram socket)."""
    kind, _, rest = addr.partition(":")
    if kind == "udp":
        host, _, port = rest.rpartition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, int(port)))
        s.setblocking(False)
        return s
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        # proto=IPPROTO_TCP, as getaddrinfo gives it: accepted sockets inherit it, and
        # asyncio's transports set TCP_NODELAY only on sockets whose proto says TCP
        # (with proto 0, uvicorn on asyncio would wait out Nagle + delayed ACK: ~40 ms a reply).
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
    elif kind == "unix":
        try:
            os.unlink(rest)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(rest)
    else:
        raise SystemExit(f"bad --addr {addr!r}: expected tcp:HOST:PORT or unix:/path")
    s.listen(1024)
    s.setblocking(False)
    return s


def bound_addr(s: socket.socket) -> str:
    if s.family == socket.AF_UNIX:
        return f"unix:{s.getsockname()}"
    host, port = s.getsockname()[:2]
    if s.type == socket.SOCK_DGRAM:
        return f"udp:{host}:{port}"
    return f"tcp:{host}:{port}"


def server_context(tls: str) -> ssl.SSLContext:
    """The TLS 1.3 server context of --tls CERT,KEY."""
    cert, _, key = tls.partition(",")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    return ctx


async def start_echo(
    kind: str,
    loop: asyncio.AbstractEventLoop,
    lsock: socket.socket,
    sslctx: ssl.SSLContext | None = None,
):
    """Starts serving; returns a closer (a callable) once the server listens."""
    tls = {"ssl": sslctx} if sslctx is not None else {}
    if kind in ("protocol", "buffered"):
        factory = EchoProtocol if kind == "protocol" else EchoBufferedProtocol
        if lsock.family == socket.AF_UNIX:
            srv = await loop.create_unix_server(factory, sock=lsock, backlog=1024, **tls)
        else:
            srv = await loop.create_server(factory, sock=lsock, backlog=1024, **tls)
        return srv.close
    if kind == "streams":
        if lsock.family == socket.AF_UNIX:
            srv = await asyncio.start_unix_server(
                streams_handler, sock=lsock, backlog=1024, **tls
            )
        else:
            srv = await asyncio.start_server(streams_handler, sock=lsock, backlog=1024, **tls)
        return srv.close
    if kind == "datagram":
        transport, _ = await loop.create_datagram_endpoint(EchoDatagramProtocol, sock=lsock)
        return transport.close
    if kind == "sock":
        tasks: set[asyncio.Task] = set()

        async def acceptor() -> None:
            # Bounded by the server's life: the loop stops at the end of the run.
            while True:
                conn, _ = await loop.sock_accept(lsock)
                conn.setblocking(False)
                set_nodelay(conn)
                t = loop.create_task(sock_handler(loop, conn))
                tasks.add(t)
                t.add_done_callback(tasks.discard)

        acc = loop.create_task(acceptor())
        return acc.cancel
    raise SystemExit(f"unknown kind {kind!r}")


async def hello_app(scope, receive, send):
    """Minimal ASGI app: every HTTP request gets 200 "Hello, world!"."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": HELLO})


def uvicorn_server(
    loop: asyncio.AbstractEventLoop, lsock: socket.socket, ready: Callable, tls: str | None = None
):
    """(main coroutine function, stop function) of a uvicorn server on `lsock`
    (HTTPS with --tls: uvicorn's own context from the same files)."""
    import uvicorn

    files = {}
    if tls:
        cert, _, key = tls.partition(",")
        files = {"ssl_certfile": cert, "ssl_keyfile": key}
    config = uvicorn.Config(
        hello_app,
        loop="none",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        **files,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    # uvicorn's SIGINT/SIGTERM capture re-raises the signal after serve() (the
    # process would die before printing its CPU line): our handlers stop it instead.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]

    async def main() -> None:
        serving = loop.create_task(server.serve(sockets=[lsock]))
        for _ in range(1000):  # up to 10 s for start-up
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            await serving  # raises what start-up raised
            raise SystemExit("uvicorn did not start")
        ready()
        await serving

    def stop() -> None:
        server.should_exit = True

    return main, stop


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("loop", choices=LOOPS)
    ap.add_argument("--addr", required=True, help="tcp:HOST:PORT (port 0: any) or unix:/path")
    ap.add_argument(
        "--max-seconds", type=float, default=600.0, help="stop after this long regardless"
    )
    ap.add_argument("--tls", default=None, help="CERT,KEY: serve TLS 1.3 with these files")
    args = ap.parse_args()

    loop = make_loop(args.loop)
    asyncio.set_event_loop(loop)
    lsock = listen_socket(args.addr)
    addr = bound_addr(lsock)
    if args.tls:
        addr = "tls:" + addr.removeprefix("tcp:")

    def ready() -> None:
        print("READY", addr, flush=True)

    if args.kind == "uvicorn":
        coro_fn, stop = uvicorn_server(loop, lsock, ready, args.tls)
    else:
        closer: list[Callable[[], object]] = []

        async def coro_fn() -> None:
            sslctx = server_context(args.tls) if args.tls else None
            closer.append(await start_echo(args.kind, loop, lsock, sslctx))
            ready()
            await stopped

        stopped = loop.create_future()

        def stop() -> None:
            if not stopped.done():
                stopped.set_result(None)

    def stop_threadsafe(*_: object) -> None:
        try:
            loop.call_soon_threadsafe(stop)
        except RuntimeError:  # loop already closed
            pass

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):  # bounded by the parent: it closes stdin
                pass
        except (OSError, ValueError):
            pass
        stop_threadsafe()

    threading.Thread(target=watch_stdin, daemon=True).start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_threadsafe)
    loop.call_later(args.max_seconds, stop)

    status = 0
    try:
        loop.run_until_complete(coro_fn())
    except BaseException as e:  # report, but still print the CPU line
        print(f"servers.py {args.kind} {args.loop}: {type(e).__name__}: {e}", file=sys.stderr)
        status = 1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps({"utime": ru.ru_utime, "stime": ru.ru_stime, "cpu": ru.ru_utime + ru.ru_stime}),
        flush=True,
    )
    if lsock.family == socket.AF_UNIX:
        try:
            os.unlink(lsock.getsockname())
        except OSError:
            pass
    # No loop teardown: open connections and tasks are simply dropped with the process.
    os._exit(status)


if __name__ == "__main__":
    main()
