"""Who owns a claimed trial or an open MLflow run, whether that process still lives, and how a
process turns SIGTERM into an orderly interrupt; the pool of worker processes one run keeps.

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
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterator, Mapping

__all__ = ["owner", "owner_is_dead", "interrupt_on_sigterm", "signals_deferred", "worker_pool", "worker_result",
           "submit", "worker_signals", "threads_per_worker", "THREAD_VARIABLES"]

#: TensorFlow's thread-pool sizes, read from the environment when its runtime starts (``process_util.cc``).
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


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


@contextlib.contextmanager
def worker_pool(jobs: int, initializer: Callable[..., None], initargs: tuple = ()) -> Iterator[ProcessPoolExecutor | None]:
    """``jobs`` spawned worker processes kept for a whole run (``None`` for ``jobs <= 1``: work in-process).

    One pool serves a run's tuning and its confirmation, so each worker imports TensorFlow, Keras,
    MLflow and Optuna and prepares the data once (about 22 s per process start on a 2-core CPU,
    benchmarks/README.md) instead of once per stage, and takes its next task when it is free rather
    than a fixed share. Workers are ``multiprocessing`` children of this process, so the SIGTERM
    handler of :func:`interrupt_on_sigterm` reaches them, and ``kill -9`` of the process group ends
    them too. On an exception or interrupt, tasks not yet started are cancelled and running ones are
    waited for (each ends its own trial or run in order).

    Each worker runs TensorFlow with :func:`threads_per_worker` intra- and inter-op threads instead
    of one pool per core in every process (with ``--jobs 2`` on 2 cores each worker had 2 intra-op and
    2 inter-op threads): ``03 --smoke --jobs 2 --no-report`` 77 s instead of 86 s idle, identical results
    (benchmarks/README.md, "Fourth round").
    ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` set by the user win.
    """
    if jobs <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                               initargs=(threads_per_worker(jobs), initializer, initargs))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def threads_per_worker(jobs: int) -> int:
    """TensorFlow threads per worker when ``jobs`` workers share this machine: its usable cores
    (``os.sched_getaffinity``) divided among them, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def _start_worker(threads: int, initializer: Callable[..., None], initargs: tuple) -> None:
    """A pool worker's start-up: its TensorFlow thread counts (before TensorFlow's runtime starts, which
    reads them; a user's own setting is kept), then the caller's ``initializer``."""
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    initializer(*initargs)


_INTERRUPTED = False  # set in a worker process once it was interrupted (in a task or idle)
_IN_TASK = False


def worker_signals() -> None:
    """In a pool worker: SIGINT and SIGTERM interrupt the running task (``KeyboardInterrupt``, so it
    gives its trial back or ends its MLflow run KILLED) and, when the worker is idle, only mark it
    interrupted, so it neither dies with a traceback between tasks nor starts another one."""
    def handler(signum, _frame):
        global _INTERRUPTED
        _INTERRUPTED = True
        if _IN_TASK:
            raise KeyboardInterrupt(f"interrupted by signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)
    # The pool starts its workers with both signals blocked (:func:`submit`), so that Ctrl-C during
    # their start-up (importing TensorFlow, ~20 s) cannot kill them with a traceback; one that arrived
    # meanwhile is delivered now, to the handler above, and marks this worker interrupted.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Run one pool task; once this worker was interrupted, refuse every later task at once.

    Ctrl-C reaches every process of the group: the running tasks end, but the pool has already handed
    each worker its next task, which must not start training after the interrupt.
    """
    global _INTERRUPTED, _IN_TASK
    if _INTERRUPTED:
        raise KeyboardInterrupt("interrupted before this task started")
    _IN_TASK = True
    try:
        return fn(*args)
    except KeyboardInterrupt:
        _INTERRUPTED = True
        raise
    finally:
        _IN_TASK = False


def submit(pool: ProcessPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future:
    """``pool.submit(fn, *args)`` such that no task starts in a worker after one of its tasks was interrupted.

    The pool spawns its worker processes inside ``submit``; SIGINT and SIGTERM are blocked meanwhile
    (:func:`signals_deferred`), and a spawned process inherits that mask, so a worker cannot be
    interrupted before its initializer installs :func:`worker_signals` (which unblocks them)."""
    with signals_deferred():
        return pool.submit(_guarded, fn, *args)


def worker_result(future: Future) -> Any:
    """A worker task's result; its failure as ``RuntimeError`` naming the worker's exception (an error in a
    worker is the run's failure, not a usage error of the caller), ``KeyboardInterrupt`` as it is."""
    try:
        return future.result()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with its type and message
        raise RuntimeError(f"a worker process failed: {type(exc).__name__}: {exc}") from exc
