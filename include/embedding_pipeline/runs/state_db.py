"""The ledger's database: where incremental runs keep their state, change logs and leases.

One SQL database through SQLAlchemy Core - SQLite under ``<work_dir>/state/state.db`` by default
(no server; many readers at once in WAL mode, one writer at a time), PostgreSQL in production
(Airflow Connection ``embedding_state``, or ``EMBEDDING_STATE_DB`` = a SQLAlchemy URL). Why a
database and not the Parquet files it replaces (measured in ``bench/bench_scale.py``): deciding a
chunk's rows is an indexed look-up whose cost does not grow with the table, a commit writes the
delta instead of rewriting the table, and the state rows, the change log and the product stage's
applied position commit in one transaction.

Tables (prefix ``embedding_state_``):

``generations``  one row per table and generation set (the physical names a run writes): model
                 identity, metadata (JSON: what a derived stage applied), the live-id count, the
                 lease of the run that holds it
``rows``         per generation and id: latest ``dt_version``, ``text_hash``, ``fields_hash``,
                 ``deleted`` (see :mod:`embedding_pipeline.runs.state`)
``logs``         per change log (a keyword collection): the number of its latest entry
``changes``      per change log entry: the ids a committed run changed and how
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    exc,
)
from sqlalchemy.engine import make_url

from embedding_pipeline.errors import ConfigError, PipelineError, SetupError
from embedding_pipeline.settings import work_dir

log = logging.getLogger(__name__)

STATE_CONN_ID = "embedding_state"

metadata = MetaData()
generations = Table(
    "embedding_state_generations",
    metadata,
    Column("gen_id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(512), nullable=False, unique=True),
    Column("table_name", String(64), nullable=False),
    Column("stores", Text, nullable=False),  # JSON {system: physical name}
    Column("model_name", String(200), nullable=False, default=""),
    Column("model_version", String(32), nullable=False, default=""),
    Column("role", String(32), nullable=False, default=""),
    Column("committed", Boolean, nullable=False, default=False),  # a first commit happened
    Column("meta", Text, nullable=False, default="{}"),
    Column("live", BigInteger, nullable=False, default=0),
    Column("lease_owner", String(512)),
    Column("lease_at", Float),
    Column("commits", Integer, nullable=False, default=0),
)
rows = Table(
    "embedding_state_rows",
    metadata,
    Column("gen_id", Integer, primary_key=True),
    Column("id", Text, primary_key=True),
    Column("dt_version", Integer, nullable=False),
    Column("text_hash", BigInteger, nullable=False),
    Column("fields_hash", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    sqlite_with_rowid=False,  # the primary key is the table's order: one B-tree, look-ups by id
)
logs = Table(
    "embedding_state_logs",
    metadata,
    Column("log", String(512), primary_key=True),
    Column("latest", Integer, nullable=False, default=0),
)
changes = Table(
    "embedding_state_changes",
    metadata,
    Column("log", String(512), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("id", Text, primary_key=True),
    Column("change", String(16), nullable=False),
    sqlite_with_rowid=False,
)


class StateUnavailableError(PipelineError):
    """The state database cannot be reached (down, a network error): a retry may succeed."""


class StateAccessError(SetupError):
    """The state database refuses this run (wrong credentials, no such database): no retry helps."""


@dataclass(frozen=True)
class StateSettings:
    """Where the state database is: a SQLAlchemy URL and where it came from (for messages).
    The password never appears in ``repr`` or in an error."""

    url: str
    source: str = "the embedded default"
    # Whether the run holding a lease (``dag_id/run_id``) still runs; None: cannot tell, so a
    # lease is honoured until it expires. The DAGs ask Airflow (pipeline_hooks.state_hook).
    run_active: Callable[[str], bool] | None = field(default=None, compare=False)

    @classmethod
    def from_env(cls) -> StateSettings:
        """``EMBEDDING_STATE_DB`` (a SQLAlchemy URL), else SQLite under the work directory."""
        url = os.environ.get("EMBEDDING_STATE_DB")
        if url:
            return cls(url, "EMBEDDING_STATE_DB")
        return cls(f"sqlite:///{work_dir() / 'state' / 'state.db'}")

    @property
    def shown_url(self) -> str:
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except exc.ArgumentError:
            return "<unparseable URL>"

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def describe(self) -> str:
        return f"state database {self.shown_url} ({self.source})"

    def __repr__(self) -> str:
        return f"StateSettings(url={self.shown_url!r}, source={self.source!r})"


def state_settings(settings: Mapping[str, Any] | None) -> StateSettings:
    """The state database of a task: ``settings["state"]`` (the stage settings mapping the DAGs
    build from Connections), else the environment."""
    given = (settings or {}).get("state")
    return given if given is not None else StateSettings.from_env()


_AUTH_WORDS = ("password authentication", "authentication failed", "does not exist", "permission denied")


@contextmanager
def db_errors(settings: StateSettings, doing: str) -> Iterator[None]:
    """Turn driver errors into one line naming the database and its Connection."""
    try:
        yield
    except exc.DBAPIError as error:
        if not isinstance(error, (exc.OperationalError, exc.InterfaceError)):
            raise
        detail = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        kind = StateAccessError if any(w in detail.lower() for w in _AUTH_WORDS) else StateUnavailableError
        hint = (
            "check that its folder is writable and on local disk"
            if settings.is_sqlite
            else "check the Connection's host, port and credentials"
        )
        raise kind(f"{settings.describe()}: cannot {doing}: {detail}; {hint}") from None
    except exc.ArgumentError as error:
        raise ConfigError(f"{settings.describe()}: not a valid SQLAlchemy URL: {error}") from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by _sqlite_begin, not pysqlite
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
    cursor.execute("PRAGMA busy_timeout=120000")  # a second writer waits for the first
    cursor.execute("PRAGMA cache_size=-131072")  # 128 MiB of pages: the default 2 MiB thrashes at 1M ids
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writing") else "BEGIN")


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction: on SQLite it holds the database's write lock from its first statement
    (other writers wait, up to the busy timeout); on PostgreSQL a plain transaction."""
    with engine.connect().execution_options(writing=True) as conn, conn.begin():
        yield conn


@functools.lru_cache(maxsize=16)
def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 120})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite begins transactions lazily (at the first write): BEGIN explicitly. A write
        # transaction (:func:`writing`) takes the write lock at its start (IMMEDIATE): one that
        # read first and then wrote would fail at once with "database is locked" whenever another
        # writer came between, instead of waiting its turn.
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
    return engine


_created: set[str] = set()


def engine_for(settings: StateSettings) -> Engine:
    """The process's engine for ``settings``; the tables are created on first use."""
    with db_errors(settings, "connect"):
        engine = _engine(settings.url)
        if settings.url not in _created:
            try:
                metadata.create_all(engine, checkfirst=True)
            except exc.IntegrityError:  # another process created them at the same moment
                metadata.create_all(engine, checkfirst=True)
            except exc.ProgrammingError as error:
                if "already exists" not in str(error):
                    raise
            _created.add(settings.url)
    return engine
