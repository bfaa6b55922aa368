"""A throwaway PostgreSQL cluster in a temporary directory, shared by the ``postgres_url`` fixture
(``tests/conftest.py``) and ``benchmarks/crash_recovery.py`` so the two start it the same way."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator

__all__ = ["PostgresUnavailable", "fresh_database", "postgres_binaries", "throwaway_postgres"]


class PostgresUnavailable(RuntimeError):
    """No cluster can be started here; the message says why (a test skips with it)."""


def postgres_binaries() -> str | None:
    """Directory holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(found)
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    return None


@contextlib.contextmanager
def throwaway_postgres(root: Path) -> Iterator[str]:
    """Start a fresh cluster on 127.0.0.1 with its data under ``root`` (removed afterwards) and yield
    its SQLAlchemy URL (``postgresql://postgres@127.0.0.1:<port>/postgres``).

    As root (CI), the cluster runs under the ``postgres`` system user via runuser (initdb refuses root).

    Raises:
        PostgresUnavailable: no psycopg 3 driver, no server binaries, no ``postgres`` user when
            running as root, or the cluster did not start (with the reason).
    """
    import pwd

    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("the driver psycopg 3 is not installed (pip install 'psycopg[binary]')") from None
    bindir = postgres_binaries()
    if bindir is None:
        raise PostgresUnavailable("no initdb/pg_ctl found (Debian: apt-get install postgresql; .ci/run does it)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run the cluster") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root and runuser is missing")
        prefix = [runuser, "-u", "postgres", "--"]
        for path in (root, *root.parents):  # the postgres user must reach the directory
            if str(path) in ("/", "/tmp"):
                break
            os.chmod(path, os.stat(path).st_mode | 0o711)
        os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run([*prefix, os.path.join(bindir, "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", str(data), "-l", str(root / "log.txt"), "-w",
                        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace")[:300]
        raise PostgresUnavailable(f"could not start a throwaway cluster: {exc} {detail}") from None
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str) -> str:
    """A new, empty database on the cluster at ``url`` (one per test or run: studies never collide)."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + f"/{name}"
