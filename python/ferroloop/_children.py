"""Child processes of a ferroloop loop: spawning and reaping.

asyncio's subprocess transport (``unix_events._UnixSubprocessTransport``:
``subprocess.Popen``, its pipes, the protocol callbacks in asyncio's order)
is used as it is; what ferroloop replaces is asyncio's *child watcher*,
the policy-wide object that learns when a child exited (a thread per child
on 3.11/3.12, pidfds on 3.14).  A ferroloop loop needs none:

* **pidfd** (Linux >= 5.3): right after ``Popen`` returns, the child's
  pidfd is opened and registered as an fd watch of the loop (the reactor's
  epoll).  It turns readable once the child exited; the callback removes the
  watch, closes the pidfd, reaps with ``waitpid`` (which cannot block then),
  and hands the return code to the transport one iteration later (asyncio's
  "skip one iteration" rule, so pipe callbacks of the same iteration run
  first).  No SIGCHLD handler, no thread; it works on a loop in any thread,
  and it never reaps a child it did not start.
* **fallback** (no ``os.pidfd_open``, or the kernel says ENOSYS/EPERM, as in
  some sandboxes): one daemon thread per child blocks in ``waitpid`` and
  passes the return code to the loop with ``call_soon_threadsafe``, as
  asyncio's ThreadedChildWatcher does.

Invariants: the loop owns every pidfd in ``loop._child_pidfds``
(pidfd -> (pid, transport)); a pidfd leaves that table exactly once, when
its child is reaped or when the loop closes.  Then the pidfd is closed and a
child still running is handed to a waiting thread, so it is reaped when it
exits (no zombie), and asyncio's "Loop ... is closed" warning is logged, as
3.11's default ThreadedChildWatcher does.  A child whose status ``Popen``
collected first (``Popen.poll()``, called by ``send_signal``/``kill``/
``close`` of a child that exited unnoticed) is reported with that status;
one that somebody else reaped is reported with return code 255 and a
warning, as asyncio reports it.
"""

from __future__ import annotations

import os
import threading
from asyncio import unix_events as _unix_events
from asyncio.log import logger
from typing import Any

# Cleared on the first ENOSYS/EPERM from pidfd_open: the fallback is used
# from then on (the answer does not change within a process).
_pidfd_usable = hasattr(os, "pidfd_open")


async def make_subprocess_transport(
    loop: Any,
    protocol: Any,
    args: Any,
    shell: bool,
    stdin: Any,
    stdout: Any,
    stderr: Any,
    bufsize: int,
    extra: Any = None,
    **kwargs: Any,
) -> Any:
    """``loop._make_subprocess_transport``: asyncio's transport, reaped by
    the loop itself (no child watcher is consulted)."""
    waiter = loop.create_future()
    transp = _unix_events._UnixSubprocessTransport(
        loop, protocol, args, shell, stdin, stdout, stderr, bufsize,
        waiter=waiter, extra=extra, **kwargs,
    )  # fmt: skip
    watch_child(loop, transp.get_pid(), transp)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transp.close()
        await transp._wait()
        raise
    return transp


def watch_child(loop: Any, pid: int, transp: Any) -> None:
    """Arranges for ``transp._process_exited(returncode)`` once ``pid``
    exits (see the module doc for how)."""
    global _pidfd_usable
    if _pidfd_usable:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # Already reaped by someone else (a SIGCHLD handler calling
            # waitpid(-1), say): asyncio's answer for that case.
            _report_already_reaped(pid)
            loop.call_soon(loop.call_soon, transp._process_exited, 255)
            return
        except OSError:
            # ENOSYS (kernel < 5.3), EPERM (seccomp): threads from now on.
            _pidfd_usable = False
        else:
            loop._child_pidfds[pidfd] = (pid, transp)
            loop._add_reader(pidfd, _reap, loop, pidfd, pid, transp)
            return
    _reap_in_thread(loop, pid, transp)


def _reap_in_thread(loop: Any, pid: int, transp: Any) -> None:
    threading.Thread(
        target=_wait_in_thread,
        args=(loop, pid, transp),
        name=f"ferroloop-waitpid-{pid}",
        daemon=True,
    ).start()


def _reap(loop: Any, pidfd: int, pid: int, transp: Any) -> None:
    # The pidfd is readable: the child exited and waitpid returns at once.
    loop._remove_reader(pidfd)
    del loop._child_pidfds[pidfd]
    os.close(pidfd)
    returncode = _waitpid(pid, transp)
    loop.call_soon(loop.call_soon, transp._process_exited, returncode)


def _wait_in_thread(loop: Any, pid: int, transp: Any) -> None:
    returncode = _waitpid(pid, transp)
    if loop.is_closed():
        logger.warning("Loop %r that handles pid %r is closed", loop, pid)
        return
    try:
        loop.call_soon_threadsafe(loop.call_soon, transp._process_exited, returncode)
    except RuntimeError:
        # The loop closed meanwhile: nobody is left to tell.
        logger.warning("Loop %r that handles pid %r is closed", loop, pid)


def _waitpid(pid: int, transp: Any) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        proc = getattr(transp, "_proc", None)
        if proc is not None and proc.returncode is not None:
            return int(proc.returncode)  # Popen.poll() reaped it first
        _report_already_reaped(pid)
        return 255
    return os.waitstatus_to_exitcode(status)


def _report_already_reaped(pid: int) -> None:
    logger.warning(
        "child process pid %d exit status already read:  will report returncode 255",
        pid,
    )


def close_child_watches(loop: Any) -> None:
    """On loop close: closes the pidfds of children still running and
    leaves each to a waiting thread (see the module doc)."""
    for pidfd, (pid, transp) in list(loop._child_pidfds.items()):
        del loop._child_pidfds[pidfd]
        loop._remove_reader(pidfd)
        os.close(pidfd)
        _reap_in_thread(loop, pid, transp)
