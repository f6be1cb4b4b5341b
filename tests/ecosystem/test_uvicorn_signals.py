"""uvicorn as a child process (``python -m uvicorn asgi_app:app``) on each
loop kind (``--loop asyncio`` for the reference run, ``--loop
ferroloop:new_event_loop`` / ``--loop asgi_app:compat_loop`` for ferroloop),
stopped with SIGINT / SIGTERM:

* idle: the server exits after its shutdown sequence;
* with a request in flight (``/held``: the app sleeps 1 s before answering):
  the listening socket closes at once, the request still gets its whole
  response (``connection: close``), then the server exits;
* a second SIGINT during the graceful wait forces the exit.

uvicorn installs its handlers with ``signal.signal`` (not
``loop.add_signal_handler``), so the loop must let Python run them while it
waits for I/O.  After a signal-initiated shutdown it restores the previous
handlers and re-raises the signal: SIGINT becomes KeyboardInterrupt, which
uvicorn's CLI swallows (exit status 0); SIGTERM's default action kills the
process (status -SIGTERM).

The clients are plain blocking ``http.client`` connections in threads.
Everything listens on 127.0.0.1, on a port the kernel picks (``--port 0``);
every wait is bounded.
"""

import concurrent.futures
import http.client
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip('uvicorn')

from ecosystem.asgi_app import held_body  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# uvicorn's --loop takes "module:callable", a zero-argument loop factory.
LOOP_OPTION = {
    'asyncio': 'asyncio',
    'ferroloop': 'ferroloop:new_event_loop',
    'ferroloop-compat': 'asgi_app:compat_loop',
}
HTTP_IMPLS = ('httptools', 'h11')
STARTUP_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0
EXPECTED_LOOP = {
    'asyncio': b'lifespan startup on asyncio.unix_events._UnixSelectorEventLoop',
    'ferroloop': b'lifespan startup on ferroloop.Loop',
    'ferroloop-compat': b'lifespan startup on ferroloop.Loop',
}
HELD_DELAY = 1.0
HELD_SIZE = 300_000


def signal_exit_status(sig):
    """uvicorn's exit status after a graceful shutdown caused by ``sig``."""
    return 0 if sig == signal.SIGINT else -sig


class UvicornProcess:
    """``python -m uvicorn asgi_app:app`` with stdout and stderr merged into
    one pipe, read incrementally into ``self.output``."""

    def __init__(self, loop_kind, http, graceful=10):
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join([HERE] + [p for p in [env.get('PYTHONPATH')] if p])
        env['PYTHONUNBUFFERED'] = '1'
        env['ASGI_APP_ANNOUNCE_LOOP'] = '1'
        env.pop('PYTHONASYNCIODEBUG', None)
        argv = [sys.executable, '-m', 'uvicorn', 'asgi_app:app', '--host', '127.0.0.1',
                '--port', '0', '--loop', LOOP_OPTION[loop_kind], '--http', http,
                '--timeout-graceful-shutdown', str(graceful)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=HERE,
                                     start_new_session=True)
        self.loop_kind = loop_kind
        self.output = b''
        self.eof = False
        self.port = None

    @property
    def log(self):
        return self.output.decode(errors='replace')

    def _read(self, timeout):
        """Reads what the pipe has within ``timeout``; False at EOF."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(max(timeout, 0)):
                return True
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            self.eof = True
            return False
        self.output += chunk
        return True

    def wait_for(self, needle, timeout):
        """Reads until ``needle`` (bytes) has been printed, at most
        ``timeout`` seconds; fails with the output so far otherwise."""
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f'timed out ({timeout} s) waiting for {needle!r}; '
                                     f'output:\n{self.log}')
            if self.eof or not self._read(left):
                raise AssertionError(f'uvicorn exited ({self.proc.wait(5)}) before printing '
                                     f'{needle!r}; output:\n{self.log}')

    def started(self):
        """Waits for the startup message; checks the app runs on the
        expected loop; sets ``self.port``."""
        self.wait_for(b'(Press CTRL+C to quit)', STARTUP_TIMEOUT)
        assert EXPECTED_LOOP[self.loop_kind] + b'\n' in self.output, self.log
        line = next(ln for ln in self.log.splitlines() if 'Uvicorn running on' in ln)
        url = line.split('Uvicorn running on ')[1].split()[0]
        assert url.startswith('http://127.0.0.1:'), line
        self.port = int(url.rsplit(':', 1)[1])
        return self

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def exit_status(self, timeout=EXIT_TIMEOUT):
        """Reads the output to EOF and reaps the process, within
        ``timeout``; fails (after killing it) if it does not exit."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f'uvicorn did not exit within {timeout} s; '
                                     f'output:\n{self.log}')
            self._read(left)
        try:
            return self.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f'uvicorn closed its output but did not exit within '
                                 f'{timeout} s; output:\n{self.log}') from None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def close(self):
        self.kill()
        self.proc.stdout.close()


@pytest.fixture
def start_uvicorn(loop_kind):
    """``start_uvicorn(http)``: a started UvicornProcess for the test's loop
    kind; killed at teardown if still running."""
    procs = []

    def start(http='httptools', **kw):
        p = UvicornProcess(loop_kind, http, **kw)
        procs.append(p)
        return p.started()

    yield start
    for p in procs:
        p.close()


def get(port, path, timeout=15.0):
    """A blocking GET on a new connection: (status, headers, body)."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request('GET', path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def get_until_eof(port, path, timeout=15.0):
    """A keep-alive GET on a raw socket, read until the server closes the
    connection (bounded by ``timeout``): (status, headers, body)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
        sock.sendall(f'GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.encode())
        data = b''
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b'\r\n\r\n')
    status_line, *lines = head.decode('latin-1').split('\r\n')
    headers = dict((k.strip().lower(), v.strip()) for k, v in
                   (ln.split(':', 1) for ln in lines))
    return int(status_line.split()[1]), headers, body


def assert_refused(port):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(('127.0.0.1', port), timeout=5).close()


def assert_clean_shutdown(log, *, waited=False, lifespan=True):
    for needle in ('Shutting down', 'Finished server process'):
        assert needle in log, log
    if lifespan:
        assert 'Application shutdown complete' in log, log
    if waited:
        assert 'Waiting for connections to close' in log, log
    assert log.index('Shutting down') < log.index('Finished server process'), log
    for bad in ('Traceback', 'Exception in ASGI application', 'timeout graceful shutdown',
                'NotImplementedError', 'was never retrieved', 'Task was destroyed'):
        assert bad not in log, log


# ---------------------------------------------------------------------------
# an idle server
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_uvicorn_idle_signal(start_uvicorn, sig):
    server = start_uvicorn('httptools')  # no request at all
    server.send_signal(sig)
    rc = server.exit_status()
    log = server.log
    assert rc == signal_exit_status(sig), log
    assert_clean_shutdown(log)
    assert 'Waiting for connections to close' not in log, log
    assert_refused(server.port)


# ---------------------------------------------------------------------------
# a request in flight
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('http', HTTP_IMPLS)
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_uvicorn_signal_during_request(start_uvicorn, sig, http):
    server = start_uvicorn(http)
    path = f'/held?tag=A&delay={HELD_DELAY}&size={HELD_SIZE}'
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        pending = pool.submit(get_until_eof, server.port, path)
        # the app has the request: it printed its marker and now sleeps
        server.wait_for(b'held request A started', 10)
        server.send_signal(sig)
        t_signal = time.monotonic()
        # uvicorn has closed its listener, and waits for the request
        server.wait_for(b'Waiting for connections to close', 10)
        assert not pending.done(), server.log
        assert_refused(server.port)
        status, headers, body = pending.result(timeout=15)
        t_response = time.monotonic()
        rc = server.exit_status()
    log = server.log
    assert status == 200, log
    assert headers.get('content-length') == str(HELD_SIZE), headers
    if http == 'httptools':  # h11 just closes the connection after the response
        assert headers.get('connection') == 'close', headers
    # the whole body, then the server closed the connection (EOF)
    assert body == held_body(HELD_SIZE)
    # the response came after the app's whole sleep, not cut short
    assert t_response - t0 >= HELD_DELAY * 0.9
    # ... and the exit did not wait for --timeout-graceful-shutdown (10 s)
    assert time.monotonic() - t_signal < 8, log
    assert rc == signal_exit_status(sig), log
    assert_clean_shutdown(log, waited=True)
    # the access log line of the held request is written before the exit
    assert f'"GET {path} HTTP/1.1" 200' in log, log
    assert log.index(f'"GET {path} HTTP/1.1" 200') < log.index('Finished server process'), log


def test_uvicorn_second_sigint_forces_exit(start_uvicorn):
    """SIGINT, then SIGINT again while uvicorn waits for a long request:
    uvicorn stops waiting (force_exit), skips the lifespan shutdown, and
    re-raises SIGINT, a KeyboardInterrupt out of the loop; closing the loop
    (asyncio.Runner) cancels the request's task, so the client gets
    uvicorn's 500 answer (or a dropped connection) at once, not the 200
    after 30 s."""
    server = start_uvicorn('httptools', graceful=30)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        pending = pool.submit(get, server.port, '/held?tag=B&delay=30&size=10')
        server.wait_for(b'held request B started', 10)
        server.send_signal(signal.SIGINT)
        server.wait_for(b'Waiting for connections to close', 10)
        server.send_signal(signal.SIGINT)
        rc = server.exit_status()
        try:
            status, _, body = pending.result(timeout=10)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            status = body = None
        assert time.monotonic() - t0 < 10, server.log
    log = server.log
    assert rc == 0, log
    assert (status, body) in ((500, b'Internal Server Error'), (None, None)), (status, body, log)
    for needle in ('Shutting down', 'Waiting for connections to close', 'Finished server process'):
        assert needle in log, log
    assert 'Application shutdown complete' not in log, log
    for bad in ('NotImplementedError', 'was never retrieved', 'Task was destroyed'):
        assert bad not in log, log
    assert_refused(server.port)
