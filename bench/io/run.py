"""ferroloop I/O benchmarks (make bench-io): echo servers and uvicorn, per loop.

    .venv/bin/python bench/io/run.py            # 5 rounds, every cell, 2 s windows (~22 min)
    .venv/bin/python bench/io/run.py --quick    # 2 rounds, 1 s windows, fewer cells (~3 min)
    .venv/bin/python bench/io/run.py --duration 3   # 3 s windows (~30 min)
    .venv/bin/python bench/io/run.py --kinds protocol,sock --sizes 1024 --transports unix

Echo cells: (kind, message size, transport), kind in protocol / streams /
buffered / sock (bench/io/servers.py), size in 1 KiB / 10 KiB / 100 KiB,
transport TCP on 127.0.0.1 or a Unix socket in a temp dir; plus the datagram
kind (a DatagramProtocol echoing with sendto) over UDP on 127.0.0.1, one
datagram per message (1 KiB: see MAX_DATAGRAM); and the protocol and streams
kinds over TLS 1.3 (the same server context on every loop; the client is
rustls, the floor echo-floor --tls on the system's OpenSSL, the library
Python's ssl module runs). Every measurement
is a FRESH server process (`servers.py KIND LOOP`), driven by the compiled
ping-pong client (bench/io/echo-client: one epoll thread, --conns
connections, each sends one message and waits for the whole echo, checked
(byte for byte up to 16 KiB and every 8th message; sampled otherwise), before
the next): the client warms up for --warmup seconds,
prints GO, measures for --duration seconds, prints its JSON and keeps its
connections open until told to go. The server's CPU time for the window is
read from /proc/PID/task/*/schedstat (ns; /proc/PID/stat ticks as a
fallback) at GO and after the JSON, so start-up, warm-up and teardown are not
in it. Loops are interleaved -- round r runs every cell on asyncio, uvloop,
rloop, ferroloop, the order's start rotating each round -- and the tables show
medians over rounds of requests/s and requests per server CPU-second, with
ratios to uvloop (> 1: more than uvloop). The floor column is a plain epoll
echo server in Rust (echo-floor: one read, one write per message), the same
client: what the syscalls alone cost.

Noise: the machine is small and shared. For every window the harness also
reads /proc/stat, and CPU time spent by anything other than the server and
the client ("rest of the machine") is reported per run; a run where it
exceeds --max-other cores is measured again (--retries, within a budget of a
quarter of the runs) and the quietest attempt is kept.

Subprocesses: bench/io/spawn.py on each loop spawns `true` with
create_subprocess_exec and awaits it, one after another, for the window:
processes/s, and processes per CPU-second of the spawning process (its
children's CPU, the same `true` everywhere, is not in it).

HTTP: uvicorn (httptools, no access log) with a hello-world ASGI app on each
loop, driven by `wrk -t1 -c50` (a 1 s wrk warm-up, then the measured run),
with the same /proc CPU accounting. Skipped with a note if wrk is missing
(`make bench-io-deps` installs it).

A loop that cannot serve a cell (for example a NotImplementedError at start-up)
shows "unsupported" there, with the reason below the table; any other failure
(a wrong echo, a crash, a timeout) is an ERROR and makes the exit status 1.
The tables go to stdout and, unless --no-save, to bench/io/results.md with a
machine description and the raw numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import re
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
SERVERS = HERE / "servers.py"
SPAWN = HERE / "spawn.py"

# bench/run.py's loop check and machine description (loaded by path: this file is also "run.py").
_spec = importlib.util.spec_from_file_location("_bench_run", BENCH / "run.py")
assert _spec and _spec.loader
_bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_run)
machine = _bench_run.machine
fmt_load = _bench_run.fmt_load

LOOPS = ("asyncio", "uvloop", "rloop", "ferroloop")
KINDS = ("protocol", "streams", "buffered", "sock", "datagram")
SIZES = (1024, 10 * 1024, 100 * 1024)
TRANSPORTS = ("tcp", "unix", "udp", "tls")
# UDP cells: 1 KiB only. 10 KiB datagrams overflow the receiving socket's
# buffer (10 in flight of ~20 KiB kernel size each > the default 208 KiB
# rmem) and loopback drops one now and then, on every loop and the floor:
# a lost ping stalls its connection (the client does not retransmit).
MAX_DATAGRAM = 1024
BASE = "uvloop"  # ratios are to this loop
FLOOR = "floor"
# --quick: every kind, 1 KiB and 100 KiB over TCP, 1 KiB over Unix.
def cell_ok(kind: str, size: int, transport: str) -> bool:
    """The datagram kind runs over UDP only, and the stream kinds never do;
    TLS cells are Protocol and streams echoes."""
    if transport == "udp":
        return kind == "datagram" and size <= MAX_DATAGRAM
    if transport == "tls":
        return kind in ("protocol", "streams")
    return kind != "datagram"


QUICK_CELLS = [
    (k, s, t)
    for t, sizes in (
        ("tcp", (1024, 100 * 1024)),
        ("unix", (1024,)),
        ("udp", (1024,)),
        ("tls", (1024, 100 * 1024)),
    )
    for s in sizes
    for k in KINDS
    if cell_ok(k, s, t)
]
TICK = os.sysconf("SC_CLK_TCK")


class Failed(Exception):
    """A measurement failed; `unsupported` when the loop lacks what the cell needs."""

    def __init__(self, msg: str, unsupported: bool = False):
        super().__init__(msg)
        self.unsupported = unsupported


class Lines:
    """Reads lines from a child's stdout pipe with a deadline (no blocking read)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.fd = proc.stdout.fileno()  # type: ignore[union-attr]
        self.buf = b""
        self.eof = False

    def next(self, timeout: float) -> str | None:
        """The next line, or None at EOF; Failed after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:  # bounded by the deadline
            if self.eof:
                if not self.buf:
                    return None
                line, self.buf = self.buf, b""
                return line.decode(errors="replace")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(
                    f"timeout: nothing from {Path(self.proc.args[1]).name} in {timeout:.0f}s"
                )
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 65536)
                if chunk:
                    self.buf += chunk
                else:
                    self.eof = True
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by every thread of `pid`."""
    try:
        total = 0
        tasks = os.listdir(f"/proc/{pid}/task")
        for tid in tasks:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def ferroloop_stamp() -> dict[str, float]:
    """mtimes of the ferroloop package's files: a rebuild during a run shows as a change."""
    try:
        spec = importlib.util.find_spec("ferroloop")  # does not import it
    except (ImportError, ValueError):
        return {}
    if spec is None or not spec.origin:
        return {}
    d = Path(spec.origin).parent
    return {f.name: f.stat().st_mtime for f in d.iterdir() if f.suffix in (".py", ".so")}


def machine_busy() -> float:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / TICK  # user nice system idle iowait irq softirq steal


def last_err(errfile, default: str) -> str:
    errfile.seek(0)
    lines = [x for x in errfile.read().decode(errors="replace").splitlines() if x.strip()]
    return lines[-1].strip() if lines else default


class Server:
    """A server process (servers.py or echo-floor) started and waited for READY."""

    def __init__(self, cmd: list[str], timeout: float):
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, bufsize=0
        )
        self.lines = Lines(self.proc)
        line = self.lines.next(timeout)
        if not line or not line.startswith("READY "):
            self.proc.wait(timeout=10)
            msg = last_err(self.err, f"exit {self.proc.returncode} before READY")
            # A loop that lacks an API fails before it listens, with NotImplementedError.
            raise Failed(msg, unsupported="NotImplementedError" in msg)
        self.addr = line.split(" ", 1)[1].strip()

    def stop(self, timeout: float = 10.0) -> dict:
        """Closes stdin (the server's stop signal); returns its exit JSON line."""
        self.proc.stdin.close()  # type: ignore[union-attr]
        out = None
        for _ in range(10_000):  # bounded: EOF (or the timeout) ends it long before
            line = self.lines.next(timeout)
            if line is None:
                break
            if line.startswith("{"):
                out = json.loads(line)
        rc = self.proc.wait(timeout=timeout)
        if rc != 0 or out is None:
            raise Failed(last_err(self.err, f"server exit {rc}"))
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.err.close()


def measure_echo(
    server_cmd: list[str], client: str, msg: int, conns: int, warmup: float, duration: float
) -> dict:
    """One echo measurement on a fresh server; Failed on any problem."""
    srv = Server(server_cmd, timeout=20)
    cl = None
    cl_err = tempfile.TemporaryFile()
    try:
        cl = subprocess.Popen(
            [client, "--addr", srv.addr, "--msg", str(msg), "--conns", str(conns),
             "--warmup", str(warmup), "--duration", str(duration), "--wait-stdin"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=cl_err, bufsize=0,
        )  # fmt: skip
        lines = Lines(cl)
        go = lines.next(warmup + 15)
        if go != "GO":
            cl.wait(timeout=10)
            raise Failed(last_err(cl_err, f"client: {go!r}"))
        cpu0, busy0 = proc_cpu(srv.proc.pid), machine_busy()
        res = lines.next(duration + 20)
        cpu1, busy1 = proc_cpu(srv.proc.pid), machine_busy()
        if not res or not res.startswith("{"):
            cl.wait(timeout=10)
            raise Failed(last_err(cl_err, f"client: {res!r}") + f" [{srv.proc.args[2:4]}]")
        cl.stdin.close()  # type: ignore[union-attr]
        cl.wait(timeout=10)
        r = json.loads(res)
        r["server_cpu_s"] = cpu1 - cpu0
        r["other_cpu_share"] = (busy1 - busy0 - r["server_cpu_s"] - r["client_cpu_s"]) / r[
            "seconds"
        ]
        r["server_total_cpu_s"] = srv.stop()["cpu"]
        return r
    finally:
        if cl is not None and cl.poll() is None:
            cl.kill()
            cl.wait(timeout=10)
        cl_err.close()
        srv.kill()


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(out: str) -> dict:
    def num(pat: str) -> float | None:
        m = re.search(pat, out)
        return float(m.group(1)) if m else None

    def lat(pct: str) -> float | None:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] * 1e6 if m else None

    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        raise Failed("wrk: no result in its output: " + out.strip().replace("\n", " | ")[-200:])
    return {
        "messages": int(m.group(1)),
        "seconds": float(m.group(2)) * _UNITS[m.group(3)],
        "msgs_per_sec": num(r"Requests/sec:\s+([\d.]+)"),
        "p50_us": lat("50"),
        "p99_us": lat("99"),
        "non_2xx": int(num(r"Non-2xx or 3xx responses:\s+(\d+)") or 0),
        "socket_errors": out.split("Socket errors:", 1)[1].splitlines()[0].strip()
        if "Socket errors:" in out
        else "",
    }


def measure_http(server_cmd: list[str], wrk: str, duration: int, conns: int) -> dict:
    srv = Server(server_cmd, timeout=30)
    try:
        if srv.addr.startswith("tls:"):
            url = "https://" + srv.addr.removeprefix("tls:") + "/"
        else:
            url = "http://" + srv.addr.removeprefix("tcp:") + "/"
        base = [wrk, "-t1", f"-c{conns}"]
        w = subprocess.run([*base, "-d1s", url], capture_output=True, text=True, timeout=30)
        if w.returncode != 0:
            raise Failed(f"wrk warm-up: exit {w.returncode}: {w.stderr.strip()[-200:]}")
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0, busy0 = proc_cpu(srv.proc.pid), machine_busy()
        t0 = time.monotonic()
        w = subprocess.run(
            [*base, f"-d{duration}s", "--latency", url],
            capture_output=True,
            text=True,
            timeout=duration + 30,
        )
        wall = time.monotonic() - t0
        cpu1, busy1 = proc_cpu(srv.proc.pid), machine_busy()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if w.returncode != 0:
            raise Failed(f"wrk: exit {w.returncode}: {w.stderr.strip()[-200:]}")
        r = parse_wrk(w.stdout)
        if r["non_2xx"] or r["socket_errors"]:
            raise Failed(
                f"wrk: {r['non_2xx']} non-2xx responses; socket errors: {r['socket_errors']}"
            )
        cpu_cl = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        r["server_cpu_s"] = cpu1 - cpu0
        r["client_cpu_s"] = cpu_cl
        r["client_cpu_share"] = cpu_cl / wall
        r["other_cpu_share"] = (busy1 - busy0 - r["server_cpu_s"] - cpu_cl) / wall
        r["server_total_cpu_s"] = srv.stop()["cpu"]
        return r
    finally:
        srv.kill()


def measure_spawn(python: str, loop: str, warmup: float, duration: float) -> dict:
    """bench/io/spawn.py on `loop`: processes spawned and awaited one after
    another, with the CPU of the spawning process over the measured part."""
    busy0, t0 = machine_busy(), time.monotonic()
    p = subprocess.run(
        [python, str(SPAWN), loop, "--warmup", str(warmup), "--duration", str(duration)],
        capture_output=True,
        text=True,
        timeout=60 + warmup + duration,
    )
    wall, busy1 = time.monotonic() - t0, machine_busy()
    if p.returncode != 0:
        msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
        raise Failed(msg, unsupported="NotImplementedError" in p.stderr)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["msgs_per_sec"] = r["messages"] / r["seconds"]
    r["client_cpu_s"] = r["children_cpu_s"]  # the children take the client's place
    r["client_cpu_share"] = r["children_cpu_s"] / r["seconds"]
    r["client_sys_s"] = 0.0
    # Over the whole run (start-up included): what else used the CPU meanwhile.
    r["other_cpu_share"] = max(
        0.0, (busy1 - busy0) / wall - (r["server_cpu_s"] + r["children_cpu_s"]) / r["seconds"]
    )
    r["p50_us"] = r["p99_us"] = None
    return r


def make_certificate(tmp: Path) -> str:
    """A self-signed P-256 certificate for localhost/127.0.0.1 made with the
    openssl CLI for this run; returns "CERT,KEY" (servers.py --tls)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return f"{cert},{key}"


def build_client() -> tuple[str, str]:
    """Builds bench/io/echo-client (a no-op when up to date); paths of its two binaries."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if shutil.which("cargo"):
        subprocess.run(
            ["cargo", "build", "--release", "-q", "-p", "echo-client"], cwd=ROOT, check=True
        )
    client, floor = target / "release" / "echo-client", target / "release" / "echo-floor"
    for b in (client, floor):
        if not b.exists():
            raise SystemExit(f"{b} missing: cargo build --release -p echo-client")
    return str(client), str(floor)


def raw_cols(runs: list[dict]) -> list[str]:
    """The raw table's columns for one (cell, loop): one value per round."""

    def join(f) -> str:
        return ", ".join(f(r) for r in runs)

    def us(x: float | None) -> str:
        return "?" if x is None else f"{x:.0f}"

    return [
        join(lambda r: f"{r['msgs_per_sec']:.0f}"),
        join(lambda r: f"{r['messages'] / max(r['server_cpu_s'], 1e-9):.0f}"),
        join(lambda r: f"{100 * r['server_cpu_s'] / r['seconds']:.0f}"),
        join(lambda r: f"{100 * r['client_cpu_share']:.0f}"),
        join(lambda r: f"{100 * r['other_cpu_share']:.0f}"),
        join(lambda r: us(r["p50_us"])),
        join(lambda r: us(r["p99_us"])),
    ]


def fmt_size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


def fmt_n(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x / 1000:.1f}k" if x >= 10_000 else f"{x:,.0f}"


def fmt_r(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="2 rounds, 1 s windows, fewer cells (~4 min)"
    )
    ap.add_argument("--rounds", type=int, default=None, help="rounds; default 5, --quick 2")
    ap.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per run; default 2, --quick 1",
    )
    ap.add_argument(
        "--http-duration", type=int, default=None, help="wrk -d seconds; default 3, --quick 1"
    )
    ap.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per run")
    ap.add_argument("--conns", type=int, default=10, help="echo client connections")
    ap.add_argument("--http-conns", type=int, default=50, help="wrk connections (-c)")
    ap.add_argument("--kinds", default=None, help="comma-separated subset of " + ",".join(KINDS))
    ap.add_argument("--sizes", default=None, help="comma-separated message sizes in bytes")
    ap.add_argument("--transports", default=None, help="comma-separated subset of tcp,unix,udp")
    ap.add_argument(
        "--loops", default=",".join(LOOPS), help="comma-separated subset of " + ",".join(LOOPS)
    )
    ap.add_argument(
        "--max-other",
        type=float,
        default=0.25,
        help="repeat a run if the rest of the machine used more than this many cores "
        "during its window (default 0.25)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="at most this many repeats per run (and a quarter of all runs in total)",
    )
    ap.add_argument("--no-echo", action="store_true", help="skip the echo cells")
    ap.add_argument("--no-http", action="store_true", help="skip uvicorn + wrk")
    ap.add_argument("--no-floor", action="store_true", help="skip the Rust floor server")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/io/results.md")
    ap.add_argument(
        "--no-spawn", action="store_true", help="skip the subprocess spawn-and-wait cell"
    )
    ap.add_argument("--no-https", action="store_true", help="skip the uvicorn HTTPS cell")
    args = ap.parse_args()

    python = sys.executable
    rounds = args.rounds or (2 if args.quick else 5)
    duration = args.duration or (1.0 if args.quick else 2.0)
    http_duration = args.http_duration or (1 if args.quick else 3)
    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else list(SIZES)
    transports = args.transports.split(",") if args.transports else list(TRANSPORTS)
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k!r}")
    for t in transports:
        if t not in TRANSPORTS:
            ap.error(f"unknown transport {t!r}")
    if args.quick and not (args.kinds or args.sizes or args.transports):
        cells = list(QUICK_CELLS)
    else:
        cells = [
            (k, s, t) for t in transports for s in sizes for k in kinds if cell_ok(k, s, t)
        ]
    if args.no_echo:
        cells = []
    groups = list(dict.fromkeys((s, t) for _, s, t in cells))  # (size, transport) in order

    loops, notes = _bench_run.select_loops(ap, python, args.loops, LOOPS)
    wrk = shutil.which("wrk")
    do_http = not args.no_http
    if do_http and not wrk:
        notes.append("HTTP skipped: wrk is not installed (make bench-io-deps)")
        do_http = False
    for note in notes:
        print("note:", note, file=sys.stderr)
    if not loops:
        print("no loop available", file=sys.stderr)
        return 2
    client, floor_bin = build_client()

    tmp = Path(tempfile.mkdtemp(prefix="ferroloop-bench-io-"))
    addr_of = {
        "tcp": "tcp:127.0.0.1:0",
        "unix": f"unix:{tmp / 'echo.sock'}",
        "udp": "udp:127.0.0.1:0",
        "tls": "tcp:127.0.0.1:0",
    }
    do_https = do_http and not args.no_https
    tls_files = (
        make_certificate(tmp) if do_https or any(t == "tls" for _, _, t in cells) else ""
    )
    # results[(cell, loop)] -> list of per-run dicts; cell = (kind, size, transport) or ("http", 0, "tcp")
    results: dict[tuple, list[dict]] = {}
    errors: dict[tuple, Failed] = {}
    load_before = os.getloadavg()
    stamp_before = ferroloop_stamp()
    if load_before[0] > 0.7:
        print(
            f"warning: load average {fmt_load(load_before)}: something else is running; "
            "this machine's numbers will be noisy (see 'rest of the machine' below)",
            file=sys.stderr,
        )
    per_round = len(cells) * len(loops) + (0 if args.no_floor else len(groups))
    per_round += len(loops) * (1 + (not args.no_https)) if do_http else 0
    do_spawn = not args.no_spawn
    per_round += len(loops) if do_spawn else 0
    total = rounds * per_round
    est = rounds * (
        (len(cells) * len(loops) + (0 if args.no_floor else len(groups)))
        * (duration + args.warmup + 0.15)
        + (len(loops) * (http_duration + 2.5) * (1 + (not args.no_https)) if do_http else 0)
        + (len(loops) * (duration + args.warmup + 0.5) if do_spawn else 0)
    )
    print(
        f"bench-io: {rounds} rounds x {per_round} runs, {duration:g} s windows, "
        f"about {est / 60:.1f} min",
        file=sys.stderr,
        flush=True,
    )

    life = str(round(60 + args.warmup + duration))  # a server's hard time limit, seconds

    retried = [0]  # runs measured again because the rest of the machine was busy

    def run_one(cell: tuple, loop: str) -> None:
        key = (cell, loop)
        if key in errors:
            return
        kind, size, transport = cell
        if kind == "spawn":
            cmd = []
        elif kind in ("http", "https"):
            cmd = [python, str(SERVERS), "uvicorn", loop, "--addr", addr_of["tcp"]]
            cmd += ["--tls", tls_files] if kind == "https" else []
        elif loop == FLOOR:
            cmd = [floor_bin, "--addr", addr_of[transport], "--max-seconds", life]
            cmd += ["--tls", tls_files] if transport == "tls" else []
        else:
            cmd = [python, str(SERVERS), kind, loop, "--addr", addr_of[transport],
                   "--max-seconds", life]  # fmt: skip
            cmd += ["--tls", tls_files] if transport == "tls" else []
        best = None
        # A run during which something else used the CPU (another process, a build)
        # is measured again, at most --retries times; the quietest attempt is kept.
        for attempt in range(1 + max(0, args.retries)):
            if attempt and retried[0] >= total // 4:
                break  # retry budget spent (a quarter of the runs): keep what we have
            if attempt:
                retried[0] += 1
                time.sleep(1.0)
            try:
                if kind == "spawn":
                    r = measure_spawn(python, loop, args.warmup, duration)
                elif kind in ("http", "https"):
                    r = measure_http(cmd, wrk, http_duration, args.http_conns)  # type: ignore[arg-type]
                else:
                    r = measure_echo(cmd, client, size, args.conns, args.warmup, duration)
            except (Failed, subprocess.TimeoutExpired, OSError, ValueError) as e:
                errors[key] = e if isinstance(e, Failed) else Failed(f"{type(e).__name__}: {e}")
                print(
                    f"  {kind}/{fmt_size(size)}/{transport} on {loop}: {errors[key]}",
                    file=sys.stderr,
                )
                return
            if best is None or r["other_cpu_share"] < best["other_cpu_share"]:
                best = r
            if r["other_cpu_share"] <= args.max_other:
                break
        results.setdefault(key, []).append(best)

    t_start = time.monotonic()
    try:
        for rnd in range(rounds):
            order = loops[rnd % len(loops) :] + loops[: rnd % len(loops)]
            for size, transport in groups:
                for cell in [c for c in cells if c[1:] == (size, transport)]:
                    for loop in order:
                        run_one(cell, loop)
                if not args.no_floor:
                    run_one((FLOOR, size, transport), FLOOR)
            if do_http:
                for loop in order:
                    run_one(("http", 0, "tcp"), loop)
            if do_https:
                for loop in order:
                    run_one(("https", 0, "tcp"), loop)
            if do_spawn:
                for loop in order:
                    run_one(("spawn", 0, "-"), loop)
            print(
                f"  round {rnd + 1}/{rounds} done ({(rnd + 1) * per_round}/{total} runs, "
                f"{time.monotonic() - t_start:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def quiet(runs: list[dict]) -> list[dict]:
        """The runs with a quiet machine, or all of them if none was."""
        q = [r for r in runs if r["other_cpu_share"] <= args.max_other]
        return q or runs

    def med(cell: tuple, loop: str, what: str) -> float | None:
        runs = quiet(results.get((cell, loop), []))
        if not runs:
            return None
        if what == "rps":
            return statistics.median(r["msgs_per_sec"] for r in runs)
        if what == "eff":
            return statistics.median(r["messages"] / max(r["server_cpu_s"], 1e-9) for r in runs)
        if what == "util":
            return statistics.median(r["server_cpu_s"] / r["seconds"] for r in runs)
        return statistics.median(r[what] for r in runs)

    def cell_text(cell: tuple, loop: str, what: str) -> str:
        e = errors.get((cell, loop))
        if e is not None and (cell, loop) not in results:
            return "unsupported" if e.unsupported else "ERROR"
        if loop not in loops and loop != FLOOR:
            return "n/a"
        runs = results.get((cell, loop), [])
        noisy = bool(runs) and all(r["other_cpu_share"] > args.max_other for r in runs)
        return fmt_n(med(cell, loop, what)) + (" †" if noisy else "")

    others = [x for x in LOOPS if x != BASE]
    show_floor = not args.no_floor

    def echo_table(what: str) -> str:
        hdr = ["kind", "transport", "msg", *LOOPS]
        hdr += ["floor (Rust epoll)"] if show_floor else []
        hdr += [f"{x}/{BASE}" for x in others]
        lines = [
            "| " + " | ".join(hdr) + " |",
            "|" + "|".join(["---"] * 3 + ["---:"] * (len(hdr) - 3)) + "|",
        ]
        for cell in cells:
            kind, size, transport = cell
            row = [kind, transport, fmt_size(size), *[cell_text(cell, x, what) for x in LOOPS]]
            if show_floor:
                row.append(cell_text((FLOOR, size, transport), FLOOR, what))
            row += [fmt_r(med(cell, x, what), med(cell, BASE, what)) for x in others]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)

    def http_table(cell: tuple = ("http", 0, "tcp")) -> str:
        label = "uvicorn + httptools, hello world" + (" (HTTPS)" if cell[0] == "https" else "")
        hdr = [label, *LOOPS, *[f"{x}/{BASE}" for x in others]]
        lines = [
            "| " + " | ".join(hdr) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|",
        ]
        for what, label in (("rps", "requests/s"), ("eff", "requests per server CPU-second")):
            row = [label, *[cell_text(cell, x, what) for x in LOOPS]]
            row += [fmt_r(med(cell, x, what), med(cell, BASE, what)) for x in others]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)

    def spawn_table() -> str:
        cell = ("spawn", 0, "-")
        hdr = ["create_subprocess_exec('true') + wait()", *LOOPS]
        hdr += [f"{x}/{BASE}" for x in others]
        lines = [
            "| " + " | ".join(hdr) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|",
        ]
        for what, label in (
            ("rps", "processes/s"),
            ("eff", "processes per parent CPU-second"),
        ):
            row = [label, *[cell_text(cell, x, what) for x in LOOPS]]
            row += [fmt_r(med(cell, x, what), med(cell, BASE, what)) for x in others]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)

    parts = []
    if cells:
        parts += [
            f"### Echo: requests/s (ping-pong, {args.conns} connections; median of {rounds} rounds)",
            echo_table("rps"),
            "### Echo: requests per server CPU-second (same runs)",
            echo_table("eff"),
        ]
    if do_http:
        parts += [
            f"### HTTP: uvicorn hello world, `wrk -t1 -c{args.http_conns} -d{http_duration}s` "
            f"(median of {rounds} rounds)",
            http_table(),
        ]
    if do_https:
        parts += [
            f"### HTTPS: uvicorn hello world over TLS, `wrk -t1 -c{args.http_conns} "
            f"-d{http_duration}s` (median of {rounds} rounds)",
            http_table(("https", 0, "tcp")),
        ]
    if do_spawn:
        parts += [
            f"### Subprocesses: spawn and wait, one at a time (median of {rounds} rounds)",
            spawn_table(),
        ]

    # Who is the bottleneck: the server's CPU use during the window, and the client's
    # (over the runs with a quiet machine: on a busy one, client and server share a core).
    foot = []

    def share(r: dict) -> float:
        return r["server_cpu_s"] / r["seconds"]

    def runs_of(pred) -> list[tuple[tuple, str, dict]]:
        return [(c, lp, r) for (c, lp), v in results.items() if pred(c, lp) for r in quiet(v)]

    def name_of(cell: tuple) -> str:
        if cell[0] in ("http", "https", "spawn"):
            return {"http": "uvicorn", "https": "uvicorn-https", "spawn": "spawn"}[cell[0]]
        return f"{cell[0]}/{fmt_size(cell[1])}/{cell[2]}"

    py = runs_of(lambda c, lp: c[0] not in ("http", "https", "spawn") and lp != FLOOR)
    if py:
        su = [share(r) for _, _, r in py]
        c_max, lp_max, r_max = max(py, key=lambda x: x[2]["client_cpu_share"])
        busy = sum(x >= 0.9 for x in su)
        ksys = sum(r["client_sys_s"] for _, _, r in py) / max(
            sum(r["client_cpu_s"] for _, _, r in py), 1e-9
        )
        foot.append(
            "Bottleneck check (echo, Python servers, the quiet runs): the server used "
            f"median {statistics.median(su):.0%} of a core (>= 90 % in {busy} of {len(su)} runs); "
            f"the load client (echo-client, one epoll thread, {ksys:.0%} of its time in the "
            f"kernel) median {statistics.median(r['client_cpu_share'] for _, _, r in py):.0%}, "
            f"max {r_max['client_cpu_share']:.0%} ({name_of(c_max)} on {lp_max}, server at "
            f"{share(r_max):.0%}). Per loop, server CPU use: "
            + ", ".join(
                f"{lp} {statistics.median(share(r) for _, x, r in py if x == lp):.0%}"
                for lp in loops
                if any(x == lp for _, x, _ in py)
            )
            + "."
        )
    fl = runs_of(lambda c, lp: lp == FLOOR)
    if fl:
        foot.append(
            "Floor: client and server are both syscall-bound (client median "
            f"{statistics.median(r['client_cpu_share'] for _, _, r in fl):.0%}, server median "
            f"{statistics.median(share(r) for _, _, r in fl):.0%} of a core), so its requests/s "
            "is the ceiling of this two-process setup on two cores, and its requests per "
            "CPU-second what the syscalls alone cost."
        )
    ht = runs_of(lambda c, lp: c[0] in ("http", "https"))
    if ht:
        foot.append(
            "HTTP: wrk used median "
            f"{statistics.median(r['client_cpu_share'] for _, _, r in ht):.0%} of a core (max "
            f"{max(r['client_cpu_share'] for _, _, r in ht):.0%}); the server median "
            f"{statistics.median(share(r) for _, _, r in ht):.0%}."
        )
    all_runs = [r for v in results.values() for r in v]
    if all_runs:
        oth = [r["other_cpu_share"] for r in all_runs]
        noisy = sum(x > args.max_other for x in oth)
        foot.append(
            "Noise: CPU used by the rest of the machine during a window (not the server, not "
            f"the client): median {statistics.median(oth):.0%} of a core, max {max(oth):.0%}. "
            f"{retried[0]} run(s) were measured again because it exceeded {args.max_other:.0%}; "
            f"{noisy} of the {len(oth)} kept runs still exceed it and are left out of a cell's "
            "median when the cell has a quieter run († marks cells with none). Per run in the "
            "raw table."
        )
    for (cell, loop), e in sorted(errors.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        what = "unsupported" if e.unsupported else "ERROR"
        foot.append(f"{what}: {name_of(cell)} on {loop}: {e}")
    changed = sorted(k for k, v in ferroloop_stamp().items() if stamp_before.get(k) != v)
    if "ferroloop" in loops and changed:
        foot.append(
            "WARNING: ferroloop changed on disk during this run ("
            + ", ".join(changed)
            + "): its numbers mix two builds."
        )
    foot += [f"note: {n}" for n in notes]
    foot.append(
        f"Medians of {rounds} rounds (quiet runs); each run a fresh server process, {args.warmup:g} s warm-up, "
        f"{duration:g} s measured; loops interleaved with a rotating start. Ratios > 1: more "
        f"than {BASE}. Server CPU is /proc's count over the measured window only."
    )
    out = "\n\n".join(parts) + "\n\n" + "\n".join(f"- {x}" for x in foot)
    print(out)

    if not args.no_save:
        raw = [
            "| cell | loop | req/s | req per server CPU-s | server CPU % | client CPU % "
            "| rest of machine CPU % | p50 us | p99 us |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (cell, loop), v in sorted(results.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
            name = name_of(cell)
            raw.append("| " + " | ".join([name, loop, *raw_cols(v)]) + " |")
        cmd = " ".join([Path(python).name, "bench/io/run.py", *sys.argv[1:]])
        doc = (
            f"# ferroloop I/O benchmark results\n\n"
            f"- Date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}\n"
            f"- Machine: {machine()}\n"
            f"- Load average (1/5/15 min) before: {fmt_load(load_before)}; "
            f"after: {fmt_load(os.getloadavg())} (machine noise indicator)\n"
            f"- Command: `{cmd}` ({rounds} rounds, {duration:g} s windows, "
            f"{time.monotonic() - t_start:.0f} s in all)\n\n"
            f"{out}\n\n<details><summary>Raw numbers (one value per round)</summary>\n\n"
            + "\n".join(raw)
            + "\n\n</details>\n"
        )
        (HERE / "results.md").write_text(doc)
        print(f"\n(written to {HERE / 'results.md'})", file=sys.stderr)
    return 1 if any(not e.unsupported for e in errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
