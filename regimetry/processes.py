"""Who owns a claimed trial or an open MLflow run, whether that process still lives, and how a
process turns SIGTERM into an orderly interrupt.

A worker records its owner (host name, process id and the process's start time) on every trial it
claims and every MLflow run it opens. A later process on the same host can then tell, without
waiting out a heartbeat grace period, that a RUNNING trial or run belongs to a process that is
gone (killed with ``kill -9``, out of memory, machine reboot): the pid no longer exists, or it now
belongs to another process (a different start time: the pid was reused). Owners on other hosts
cannot be checked this way; for them the storage's heartbeat (RDB storages) decides.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import signal
import socket
import threading
from typing import Any, Iterator, Mapping

__all__ = ["owner", "owner_is_dead", "interrupt_on_sigterm", "signals_deferred"]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc/<pid>/stat`` field 22),
    or ``None`` where ``/proc`` is unavailable or the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


@functools.lru_cache(maxsize=None)
def _owner_for(pid: int) -> tuple[tuple[str, Any], ...]:
    return (("host", socket.gethostname()), ("pid", pid), ("start", _start_time(pid)))


def owner() -> dict[str, Any]:
    """``{"host": ..., "pid": ..., "start": ...}`` of the calling process (JSON-serialisable)."""
    return dict(_owner_for(os.getpid()))


def owner_is_dead(record: Mapping[str, Any] | None) -> bool:
    """True only when ``record`` names a process on this host that certainly no longer runs.

    ``False`` for an unknown owner, another host, or a process that is alive (so a caller never
    takes over a trial that may still be running).
    """
    if not record or record.get("host") != socket.gethostname():
        return False
    try:
        pid = int(record["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        pass
    recorded, now = record.get("start"), _start_time(pid)
    return recorded is not None and now is not None and str(recorded) != str(now)  # pid reused


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, ``docker stop``, Slurm, systemd) end a run as Ctrl-C does.

    Python's default for SIGTERM is to die at once, leaving the parent and arm MLflow runs RUNNING.
    With this handler the signal raises ``KeyboardInterrupt``: the running trial gives its budget slot
    back, MLflow runs end ``KILLED``, and a re-run resumes. The main process forwards the signal to
    its worker processes (which install the same handler), since ``kill PID`` reaches one process only.
    No-op outside the main thread (``signal`` allows handlers there only).
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, _frame):
        for child in mp.active_children():
            try:
                os.kill(child.pid, signal.SIGTERM)
            except OSError:
                pass  # already gone
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (delivered when the block ends) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
