"""Real servers for the ecosystem tests: redis-server and PostgreSQL.

Both are started once per session as unprivileged processes, in a scratch
directory, listening on 127.0.0.1 on a free port (PostgreSQL also on a Unix
socket in its scratch directory), and stopped at the end of the session.
Nothing here talks to any address but loopback.  ``postgres_tls_server`` is
a second PostgreSQL, started only by the tests that use it, with ``ssl=on``
and a certificate from the session's trustme CA (``tls_ca``).

The binaries come from Debian's ``redis-server`` and ``postgresql`` packages
(``make test-deps`` installs them).  When they are missing the fixtures skip,
or fail with ``FERROLOOP_REQUIRED=1`` (as for the ferroloop params).

Besides the ``loop``/``run`` fixtures of ``tests/conftest.py``, tests here use
``bounded(run)``: ``run`` with every coroutine under a time limit.
"""

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from io_helpers import unused_port

# Upper bound for one whole ecosystem test coroutine (seconds).
TEST_TIMEOUT = 30.0
# Upper bound for a server to start / stop (seconds).
SERVER_TIMEOUT = 30.0


def missing(what):
    msg = (f'{what}; run `make test-deps` (as root) to install Debian\'s '
           f'redis-server and postgresql packages')
    if os.environ.get('FERROLOOP_REQUIRED'):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _stop_process(proc, sig=signal.SIGTERM, timeout=10.0):
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# ---------------------------------------------------------------------------
# redis
# ---------------------------------------------------------------------------

def _redis_ping(port):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1.0) as s:
            s.sendall(b'PING\r\n')
            return s.recv(64).startswith(b'+PONG')
    except OSError:
        return False


@pytest.fixture(scope='session')
def redis_server():
    """A redis-server for this session: a dict with ``host``, ``port`` and
    ``unix_socket`` (the path of its Unix socket)."""
    exe = shutil.which('redis-server')
    if exe is None:
        missing('redis-server is not installed')
    scratch = tempfile.mkdtemp(prefix='fl-redis-')
    proc = None
    try:
        for _attempt in range(3):  # a free port can be taken before we bind it
            port = unused_port()
            log = open(os.path.join(scratch, 'redis.log'), 'wb')
            with log:
                proc = subprocess.Popen(
                    [exe, '--port', str(port), '--bind', '127.0.0.1',
                     '--save', '', '--appendonly', 'no', '--daemonize', 'no',
                     '--unixsocket', os.path.join(scratch, 'redis.sock'),
                     '--unixsocketperm', '700', '--dir', scratch],
                    stdout=log, stderr=subprocess.STDOUT, cwd=scratch,
                    start_new_session=True)
            deadline = time.monotonic() + SERVER_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if _redis_ping(port):
                    break
                time.sleep(0.05)
            if proc.poll() is None and _redis_ping(port):
                break
            _stop_process(proc)
            proc = None
        if proc is None:
            with open(os.path.join(scratch, 'redis.log'), errors='replace') as f:
                pytest.fail(f'redis-server did not start:\n{f.read()[-2000:]}', pytrace=False)
        yield {'host': '127.0.0.1', 'port': port,
               'unix_socket': os.path.join(scratch, 'redis.sock')}
    finally:
        if proc is not None:
            _stop_process(proc)
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

PG_UNPRIVILEGED_USER = 'postgres'  # Debian's package creates it
PG_FALLBACK_USER = 'ferroloop-pg'


def _pg_bindir():
    initdb = shutil.which('initdb')
    if initdb is not None:
        return os.path.dirname(os.path.realpath(initdb))
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'),
                   key=lambda p: int(p.split('/')[-3]) if p.split('/')[-3].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def _pg_run_as():
    """argv prefix that runs a command as an unprivileged user (initdb and
    postgres refuse to run as root), and that user's uid/gid."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    runuser = shutil.which('runuser')
    if runuser is None:
        missing('running PostgreSQL as root needs runuser (util-linux)')
    for name in (PG_UNPRIVILEGED_USER, PG_FALLBACK_USER):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return [runuser, '-u', name, '--'], pw.pw_uid, pw.pw_gid
    subprocess.run(['useradd', '--system', '--no-create-home', '--shell',
                    '/usr/sbin/nologin', PG_FALLBACK_USER], check=True, timeout=30)
    pw = pwd.getpwnam(PG_FALLBACK_USER)
    return [runuser, '-u', PG_FALLBACK_USER, '--'], pw.pw_uid, pw.pw_gid


def _run(argv, what, timeout=SERVER_TIMEOUT):
    try:
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f'{what} timed out after {timeout}s: {exc.output!r}', pytrace=False)
    return res


@contextlib.contextmanager
def _postgres_instance(configure=None):
    """Runs one PostgreSQL instance in a fresh scratch directory; yields
    its connection parameters (see ``postgres_server``).  ``configure(data,
    scratch, uid, gid)``, if given, runs between initdb and the start."""
    bindir = _pg_bindir()
    if bindir is None or not os.path.exists(os.path.join(bindir, 'pg_ctl')):
        missing('PostgreSQL (initdb, pg_ctl) is not installed')
    prefix, uid, gid = _pg_run_as()
    initdb = os.path.join(bindir, 'initdb')
    pg_ctl = os.path.join(bindir, 'pg_ctl')

    # Short path: the Unix socket's path must fit sun_path.
    scratch = tempfile.mkdtemp(prefix='fl-pg-')
    data = os.path.join(scratch, 'data')
    logfile = os.path.join(scratch, 'postgres.log')
    os.chown(scratch, uid, gid)
    started = False
    try:
        res = _run(prefix + [initdb, '-D', data, '-U', 'postgres', '--auth=trust',
                             '--encoding=UTF8', '--locale=C', '--no-sync'], 'initdb')
        if res.returncode != 0:
            pytest.fail(f'initdb failed:\n{res.stdout.decode(errors="replace")}',
                        pytrace=False)
        if configure is not None:
            configure(data, scratch, uid, gid)
        for _attempt in range(3):
            port = unused_port()
            opts = (f'-c listen_addresses=127.0.0.1 -p {port} '
                    f'-c unix_socket_directories={scratch} '
                    f'-c fsync=off -c synchronous_commit=off -c full_page_writes=off '
                    f'-c max_connections=50')
            res = _run(prefix + [pg_ctl, '-D', data, '-l', logfile, '-o', opts,
                                 '-w', '-t', str(int(SERVER_TIMEOUT)), 'start'],
                       'pg_ctl start', timeout=SERVER_TIMEOUT + 10)
            if res.returncode == 0:
                started = True
                break
        if not started:
            with open(logfile, errors='replace') as f:
                pytest.fail(f'PostgreSQL did not start:\n{res.stdout.decode(errors="replace")}'
                            f'\n{f.read()[-2000:]}', pytrace=False)
        yield {'host': '127.0.0.1', 'port': port, 'user': 'postgres',
               'database': 'postgres', 'socket_dir': scratch}
    finally:
        if started:
            _run(prefix + [pg_ctl, '-D', data, '-m', 'fast', '-w', '-t',
                           str(int(SERVER_TIMEOUT)), 'stop'], 'pg_ctl stop',
                 timeout=SERVER_TIMEOUT + 10)
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope='session')
def postgres_server():
    """Connection parameters of a PostgreSQL server for this session:
    a dict with host, port, user, database and ``socket_dir`` (the directory
    of its Unix socket)."""
    with _postgres_instance() as params:
        yield params


@pytest.fixture(scope='session')
def postgres_tls_server(tls_ca):
    """A second PostgreSQL instance (the plain ``postgres_server`` stays
    TLS-free) with ``ssl=on``: its certificate is issued by the session's
    trustme CA (``tls_ca``) for 127.0.0.1 and localhost; TCP clients must use
    TLS (``hostssl ... trust``, ``hostnossl ... reject``), Unix-socket ones
    need not.  The dict of ``postgres_server`` plus ``ca_file``, the path of
    the CA certificate (PEM)."""
    leaf = tls_ca.issue_cert('127.0.0.1', 'localhost')

    def configure(data, scratch, uid, gid):
        cert = os.path.join(scratch, 'server.crt')
        key = os.path.join(scratch, 'server.key')
        for blob in leaf.cert_chain_pems:
            blob.write_to_path(cert, append=True)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'wb') as f:
            f.write(leaf.private_key_pem.bytes())
        for path in (cert, key):
            os.chown(path, uid, gid)
        os.chmod(key, 0o600)  # PostgreSQL refuses a group/world-readable key
        with open(os.path.join(data, 'postgresql.conf'), 'a') as f:
            f.write(f"\nssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n")
        with open(os.path.join(data, 'pg_hba.conf'), 'w') as f:
            f.write('local     all  all                trust\n'
                    'hostssl   all  all  127.0.0.1/32  trust\n'
                    'hostnossl all  all  127.0.0.1/32  reject\n')

    with tempfile.TemporaryDirectory(prefix='fl-pgca-') as d:
        ca_file = os.path.join(d, 'ca.pem')
        tls_ca.cert_pem.write_to_path(ca_file)
        with _postgres_instance(configure) as params:
            yield {**params, 'ca_file': ca_file}


# ---------------------------------------------------------------------------
# running coroutines
# ---------------------------------------------------------------------------

@pytest.fixture
def bounded(run):
    """``bounded(coro, timeout=TEST_TIMEOUT)`` runs ``coro`` on the test's
    loop and fails (TimeoutError) if it takes longer than ``timeout``."""
    def runner(coro, timeout=TEST_TIMEOUT):
        return run(asyncio.wait_for(coro, timeout))

    return runner


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------

@pytest.fixture(scope='session')
def tls_files(tmp_path_factory):
    """``(certfile, keyfile)``: a self-signed certificate for 127.0.0.1 and
    localhost, made with the openssl CLI."""
    exe = shutil.which('openssl')
    if exe is None:
        missing('the openssl command is not installed')
    d = tmp_path_factory.mktemp('tls')
    cert, key = str(d / 'cert.pem'), str(d / 'key.pem')
    res = _run([exe, 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
                '-days', '2', '-subj', '/CN=localhost',
                '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], 'openssl req')
    if res.returncode != 0:
        pytest.fail(f'openssl req failed:\n{res.stdout.decode(errors="replace")}',
                    pytrace=False)
    return cert, key


@pytest.fixture
def tls_contexts(tls_files):
    """``(server_ctx, client_ctx)``: the client trusts only the self-signed
    certificate and checks the host name."""
    import ssl
    cert, key = tls_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert)
    return server, client


@pytest.fixture(scope='session')
def tls_ca():
    """A trustme certificate authority for this session (servers' leaf
    certificates: ``tls_ca.issue_cert('127.0.0.1', 'localhost')``)."""
    trustme = pytest.importorskip('trustme')
    return trustme.CA()
