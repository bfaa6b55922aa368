"""Credentials in storage and tracking URLs, kept out of every message, tag, log line and report."""

from __future__ import annotations

import contextlib
import re

__all__ = ["check_credentials", "driver_hint", "has_password", "is_foreign_file", "mask_password", "one_line", "redact_url",
           "connect_args", "sqlite_store_kind", "url_scheme"]


def url_scheme(url: str | None) -> str:
    """The database kind of a storage / tracking URL, lower case and without the driver:
    ``"postgresql"`` for ``postgresql+psycopg://...``; ``""`` when there is no ``scheme://``."""
    return url.split("://", 1)[0].split("+", 1)[0].lower() if url and "://" in url else ""


#: ``scheme://user:password@host...``. As in SQLAlchemy's URL parser, the password runs to an ``@``, so it may
#: hold an unencoded ``/``; it runs to the last ``@`` that a host name and the end, a ``/`` or a ``?`` follow, so an
#: ``@`` inside it is kept too (a database name holding an ``@`` is then masked with it: the safe side).
_CREDENTIALS = re.compile(r"^(?P<scheme>[\w+.-]+)://(?P<user>[^:/]*):(?P<password>.*)@(?P<host>[^@/?]+)(?P<tail>[/?].*)?$",
                          re.DOTALL)


def check_credentials(url: str | None, option: str) -> None:
    """Refuse a password holding an unencoded ``@``: SQLAlchemy's URL parser (and so every driver behind
    Optuna and MLflow) ends the password at the first ``@`` and reads the rest as the host name, so the
    connection could only fail, with a message quoting part of the password as a host.

    Raises:
        ValueError: naming ``option`` (password masked) and the percent-encoding to use.
    """
    match = _CREDENTIALS.match(url) if url else None
    in_query = any("@" in m.group(0) for m in _QUERY_PASSWORD.finditer(url or ""))
    if in_query or (match is not None and "@" in match["password"]):
        raise ValueError(f"{option} {redact_url(url)!r}: the password holds an unencoded '@', which the database "
                         "driver would read as the start of the host name; percent-encode it as %40 (and '/' as "
                         "%2F, ':' as %3A)")


def has_password(url: str | None) -> bool:
    """Whether a storage / tracking URL carries credentials (``scheme://user:pw@host/...``). A file name with
    an ``@`` (``sqlite:///data/a@b.db``) is not a password; a password with an unencoded ``/`` or ``@`` is."""
    return bool(url) and _CREDENTIALS.match(url) is not None


def one_line(message: object, limit: int = 400) -> str:
    """A driver's (possibly multi-line) error message as one line: SQLAlchemy's "Background on this
    error" link dropped, whitespace collapsed, cut at ``limit`` characters."""
    lines = [line for line in str(message).splitlines() if not line.strip().startswith("(Background on this error")]
    text = " ".join(" ".join(lines).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: A password given as a query parameter (``...?password=...``, libpq's and PyMySQL's spelling among others).
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pwd)=)[^&#\s'\"]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``postgresql://u:***@host/db``, also a
    ``?password=...`` query parameter), for every message, tag, log line and report; URLs without
    credentials come back unchanged."""
    url = _QUERY_PASSWORD.sub(r"\1***", url) if url else url
    match = _CREDENTIALS.match(url) if url else None
    if match is None:
        return url
    return f"{match['scheme']}://{match['user']}:***@{match['host']}{match['tail'] or ''}"


def mask_password(text: object, url: str | None) -> str:
    """``text`` (e.g. a database driver's error message, which may quote the URL) with the password of
    ``url`` replaced by ``***`` wherever it occurs as a token of its own (not inside a longer run of
    letters and digits: a one-letter password ``p`` must not turn ``psycopg`` into ``***syco***g``)."""
    text = str(text)
    values = [m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(url or "")]
    match = _CREDENTIALS.match(url) if url else None
    if match is not None:
        values.append(match["password"])
    # each value, and each part around an "@" in it (a driver may quote the part after it as a host), longest first
    passwords = sorted({part for value in values for part in (value, *value.split("@"))}, key=len, reverse=True)
    for password in filter(None, passwords):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(password)}(?![A-Za-z0-9])", "***", text)
    return text


def is_foreign_file(path) -> bool:
    """Whether ``path`` is a non-empty file that is not a SQLite database (its first 16 bytes are not
    SQLite's header): the one check behind both ``--storage`` and ``--tracking-uri`` refusing a
    user's own file before anything is written to it."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as handle:
        return handle.read(16) != b"SQLite format 3\x00"


#: What to install for a database URL whose driver is missing, by scheme (SQLAlchemy's default drivers).
_DRIVERS = {"postgresql": "pip install 'psycopg[binary]' (or pip install -e '.[postgres]')",
            "mysql": "pip install pymysql and write mysql+pymysql://...",
            "mssql": "pip install pyodbc (and an ODBC driver for SQL Server)"}


def driver_hint(url: str) -> str:
    """How to install the database driver a storage / tracking URL needs: ``"for postgresql:// pip install ..."``."""
    scheme = url_scheme(url)
    return f"for {scheme}:// {_DRIVERS[scheme]}" if scheme in _DRIVERS else \
        "install the database driver its scheme names (" + "; ".join(f"{k}: {v}" for k, v in _DRIVERS.items()) + ")"


#: Tables that only one of the two stores has: a file holding all of one set is that kind of store.
_STORE_TABLES = {"MLflow tracking store": {"experiments", "runs", "metrics"},
                 "Optuna storage": {"studies", "trials", "version_info"}}


def sqlite_store_kind(path) -> str | None:
    """``"MLflow tracking store"`` or ``"Optuna storage"`` when the existing SQLite file ``path`` holds that
    store's tables, else ``None`` (no such file, empty, unreadable, or neither). Read-only: nothing is
    written, so ``--storage`` and ``--tracking-uri`` can refuse each other's database before either
    library adds its tables to it (both keep their schema version in an ``alembic_version`` table)."""
    import sqlite3
    from pathlib import Path

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return None
    return next((kind for kind, names in _STORE_TABLES.items() if names <= tables), None)


#: Seconds to wait for a database server to answer a connection: without a limit, a server that accepts the
#: TCP connection and never answers (a firewall, a wrong service on the port) hangs a run for minutes.
CONNECT_TIMEOUT_SECONDS = 10


def connect_args(url: str) -> dict:
    """SQLAlchemy ``connect_args`` with a connection timeout for server databases (``postgresql://``,
    ``mysql://``: both drivers take ``connect_timeout``); ``{}`` for other URLs."""
    return {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if url_scheme(url) in ("postgresql", "mysql") else {}
