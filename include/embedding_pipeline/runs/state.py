"""What the stores hold, per id: the state incremental runs compare each input row with.

One state per table and *generation set* (the physical collection/index names a run writes, e.g.
``keywords/es=keywords-g1,qdrant=keywords-g1``): a new generation starts with no state and is
filled in full. Per id (tables: :mod:`embedding_pipeline.runs.state_db`)::

    id           business key
    dt_version   the latest partition that spoke about the id (upsert, unchanged or delete)
    text_hash    first 8 bytes of the staged ``content_hash`` (model name + version + text)
    fields_hash  hash of the stored fields other than the text and ``dt``
    deleted      a tombstone: kept so a late backfill of an older date cannot resurrect it

Why a ledger and not look-ups in the stores: batched look-ups by id in Qdrant local mode or
Elasticsearch ``mget`` cost minutes at a million ids, and neither store can keep tombstones
without readers seeing them. The stores stay the truth for content: ``text_hash`` derives from
the ``content_hash`` both stores keep.

Each embed task looks up its chunk's ids (indexed: the cost does not grow with the table). The
stage's finalize task commits, after every store write of the run is known, in one transaction:
the run's rows (ids a store dead-lettered keep their previous state, so the next run retries
them), the generation's metadata (what a derived stage applied, e.g. the product stage's
change-log position) and, for the keyword collection, the change log entry of what the run
changed. A run holds a *lease* on the generation from its prepare task to that commit: a second
run that would write the same generation is refused at once, naming the holder.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, delete, func, insert, or_, select, update

from embedding_pipeline.errors import SetupError
from embedding_pipeline.runs.state_db import (
    StateSettings,
    changes,
    db_errors,
    engine_for,
    generations,
    logs,
    rows,
    writing,
)
from embedding_pipeline.runs.storage import read_parquet

log = logging.getLogger(__name__)


SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dt_version", pa.int32()),
        ("text_hash", pa.int64()),
        ("fields_hash", pa.int64()),
        ("deleted", pa.bool_()),
    ]
)
# A run's per-chunk delta: the state columns plus what the row did (runs.changes.decide), which
# the change log of derived data (product links) is made from.
DELTA_SCHEMA = SCHEMA.append(pa.field("change", pa.string()))
IDENTITY_KEYS = ("model_name", "model_version", "role")
CHANGED = ("upsert", "update", "delete")  # what a change log records
LOOKUP_BATCH = 900  # ids per indexed look-up (under SQLite's bound-parameter limit)
WRITE_BATCH = 5000  # rows per executemany of a commit
ANALYZE_ROWS = 10_000  # a commit this large refreshes PostgreSQL's statistics of the rows table
LEASE_TTL_S = 24 * 3600.0  # a lease whose holder cannot be asked is honoured this long


class ModelChangedError(SetupError):
    """An incremental run with another model (or role) than the generation's stored vectors."""


class GenerationBusyError(SetupError):
    """Another run holds the generation this run would write."""


@dataclass(frozen=True)
class Prior:
    """The state of one id before this run."""

    dt_version: int
    text_hash: int
    fields_hash: int
    deleted: bool


def text_hash(content_hash: str) -> int:
    """The state's 64-bit text key: the first 8 bytes of the staged sha256 ``content_hash``."""
    return int.from_bytes(bytes.fromhex(content_hash[:16]), "big", signed=True)


def fields_hash(payload: Mapping[str, Any]) -> int:
    """64-bit hash of the stored fields except ``dt``: a row seen again on a later date with the
    same text and fields is unchanged (``dt`` only says where it was read)."""
    fields = {k: v for k, v in payload.items() if k != "dt" and v is not None}
    digest = hashlib.blake2b(
        json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str).encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def generation_key(table: str, stores: Mapping[str, str]) -> str:
    """``<table>/<store>=<name>,...`` for the physical names in ``stores`` (``{"qdrant": "kw-g1"}``)."""
    key = ",".join(f"{store}={name}" for store, name in sorted(stores.items()))
    return f"{table}/" + re.sub(r"[^A-Za-z0-9_.,=-]+", "_", key)


def _batches(values: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _marker(conn: Connection) -> str:
    """The driver's positional placeholder (the hot paths bypass SQLAlchemy's per-row parameter
    processing, which costs 10x the database's own work; measured in bench/bench_scale.py)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _priors(conn: Connection, gen_id: int, ids: list[str]) -> dict[str, Prior]:
    """The stored state of ``ids``: indexed look-ups on the primary key, a batch at a time."""
    p = _marker(conn)
    head = f"SELECT id, dt_version, text_hash, fields_hash, deleted FROM {rows.name} WHERE gen_id = {p} AND "
    found: dict[str, Prior] = {}
    for batch in _batches(ids, LOOKUP_BATCH):
        if conn.dialect.name == "postgresql":
            result = conn.exec_driver_sql(head + f"id = ANY({p})", (gen_id, batch))
        else:
            result = conn.exec_driver_sql(head + f"id IN ({', '.join([p] * len(batch))})", (gen_id, *batch))
        for row_id, version, thash, fhash, deleted in result:
            found[row_id] = Prior(version, thash, fhash, bool(deleted))
    return found


class IndexState:
    """The state of one generation set of a table (see the module docstring)."""

    def __init__(self, settings: StateSettings, key: str) -> None:
        self.settings = settings
        self.key = key
        self.engine = engine_for(settings)

    @classmethod
    def of(cls, settings: StateSettings, table: str, stores: Mapping[str, str]) -> IndexState:
        return cls(settings, generation_key(table, stores))

    def _errors(self, doing: str) -> Any:
        return db_errors(self.settings, f"{doing} the state of {self.key}")

    def _row(self, conn: Connection) -> Any:
        return conn.execute(select(generations).where(generations.c.key == self.key)).one_or_none()

    def _ensure(self, conn: Connection) -> int:
        """The generation's ``gen_id``, its row created on first use."""
        found = self._row(conn)
        if found is not None:
            return found.gen_id
        table, _, names = self.key.partition("/")
        stores = dict(pair.split("=", 1) for pair in names.split(",") if "=" in pair)
        result = conn.execute(
            insert(generations).values(
                key=self.key, table_name=table, stores=json.dumps(stores, sort_keys=True), meta="{}"
            )
        )
        return result.inserted_primary_key[0]

    def _record(self) -> Any:
        """The generation's row (None before its first lease or commit)."""
        with self._errors("read"), self.engine.connect() as conn:
            return self._row(conn)

    def _gen_id(self) -> int | None:
        found = self._record()
        return None if found is None else found.gen_id

    def exists(self) -> bool:
        """Whether a run has committed this generation's state."""
        found = self._record()
        return bool(found is not None and found.committed)

    def identity(self) -> dict[str, str] | None:
        """The model (name, version, role) the stored vectors were made with; None before any commit."""
        found = self._record()
        if found is None or not found.committed:
            return None
        return {key: getattr(found, key) or "" for key in IDENTITY_KEYS}

    def check_identity(self, identity: Mapping[str, Any], what: str) -> None:
        """Refuse an incremental run whose model differs from the generation's, naming both."""
        stored = self.identity()
        wanted = {key: str(identity.get(key) or "") for key in IDENTITY_KEYS}
        if stored is not None and stored != wanted:
            raise ModelChangedError(
                f"{what} was built with model {stored['model_name']} v{stored['model_version']} "
                f"(role {stored['role'] or 'none'}) but this run embeds with {wanted['model_name']} "
                f"v{wanted['model_version']} (role {wanted['role'] or 'none'}): vectors of two models "
                "cannot share a generation. Run a full rebuild into a new generation, or publish/"
                "choose the model the generation was built with."
            )

    def metadata(self) -> dict[str, Any]:
        found = self._record()
        return {} if found is None else json.loads(found.meta or "{}")

    def lookup(self, ids: Iterable[str]) -> dict[str, Prior]:
        """The prior state of ``ids`` (ids the state does not know are absent): indexed look-ups,
        whose cost follows the number of ids asked for, not the size of the table."""
        wanted = sorted(set(ids))
        gen_id = self._gen_id() if wanted else None
        if gen_id is None:
            return {}
        with self._errors("look up ids in"), self.engine.connect() as conn:
            return _priors(conn, gen_id, wanted)

    def live_count(self) -> int:
        found = self._record()
        return 0 if found is None else int(found.live)

    def live_batches(self, up_to_version: int | None = None, batch: int = 100_000) -> Iterator[pa.Table]:
        """Ids not deleted (``id``, ``dt_version``) in id order, ``batch`` at a time, optionally only
        those last seen at or before ``up_to_version`` (what a snapshot of that date deletes when it
        lacks them). Streamed: memory follows ``batch``, not the table."""
        gen_id = self._gen_id()
        if gen_id is None:
            return
        query = select(rows.c.id, rows.c.dt_version).where(rows.c.gen_id == gen_id, rows.c.deleted.is_(False))
        if up_to_version is not None:
            query = query.where(rows.c.dt_version <= up_to_version)
        with self._errors("read live ids of"), self.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch).execute(query.order_by(rows.c.id))
            for part in result.partitions():
                ids, versions = zip(*part, strict=True)
                yield pa.table(
                    {"id": pa.array(ids, pa.string()), "dt_version": pa.array(versions, pa.int32())}
                )

    def live(self, up_to_version: int | None = None) -> pa.Table:
        """:meth:`live_batches` in one table (a full relink's product ids)."""
        parts = list(self.live_batches(up_to_version))
        return pa.concat_tables(parts) if parts else SCHEMA.empty_table().select(["id", "dt_version"])

    def smallest_by_hash(self, n: int) -> list[str]:
        """``n`` live ids, the same ones for the same state: the smallest by a hash of the id
        (the gate's canaries). One streamed pass; memory follows ``n``."""
        digest = lambda i: hashlib.blake2b(i.encode(), digest_size=8).digest()  # noqa: E731
        ids = (i for part in self.live_batches() for i in part["id"].to_pylist())
        return [i for _, i in heapq.nsmallest(n, ((digest(i), i) for i in ids))]

    def acquire(self, owner: str) -> None:
        """Hold the generation for the run ``owner`` (``dag_id/run_id``) until its commit.

        Refused (:class:`GenerationBusyError`, naming the holder) while another run holds it and
        still runs: two runs writing one generation would race in the stores and at commit. A
        lease whose holder has ended (asked through ``settings.run_active``) or expired
        (``LEASE_TTL_S``, when the holder cannot be asked) is taken over."""
        now = time.time()
        with self._errors("lease"), writing(self.engine) as conn:
            gen_id = self._ensure(conn)
            free = or_(
                generations.c.lease_owner.is_(None),
                generations.c.lease_owner == owner,
                generations.c.lease_at < now - LEASE_TTL_S,
            )
            claim = (
                update(generations)
                .where(generations.c.gen_id == gen_id)
                .values(lease_owner=owner, lease_at=now)
            )
            if conn.execute(claim.where(free)).rowcount:
                return
            holder = self._row(conn)
            active = self.settings.run_active
            if active is not None and not active(holder.lease_owner):
                log.warning("taking over %s from run %s, which no longer runs", self.key, holder.lease_owner)
                conn.execute(claim.where(generations.c.lease_owner == holder.lease_owner))
                return
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.lease_at))
        raise GenerationBusyError(
            f"{self.key} is held by run {holder.lease_owner} (since {since}): two runs must not "
            "write one generation at once. Wait for that run to end, or, if it is dead, release it "
            f"with `embedding-pipeline state release {self.key}`."
        )

    def release(self, owner: str | None = None) -> bool:
        """Give the lease up (``owner``: only if that run holds it). Whether a lease was held."""
        query = update(generations).where(
            generations.c.key == self.key, generations.c.lease_owner.is_not(None)
        )
        if owner is not None:
            query = query.where(generations.c.lease_owner == owner)
        with self._errors("release the lease of"), writing(self.engine) as conn:
            return bool(conn.execute(query.values(lease_owner=None, lease_at=None)).rowcount)

    def commit(
        self,
        delta: pa.Table,
        identity: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        *,
        owner: str | None = None,
        change_log: str | None = None,
    ) -> int | None:
        """Merge this run's ``delta`` (see :func:`merged_delta`) into the state, in one transaction
        with ``metadata`` (merged into the generation's) and, with ``change_log``, that log's entry
        of the delta's changes. Per id the row with the greatest ``dt_version`` wins; on a tie,
        this run's row. Costs the delta, not the table. Refused if another run holds the lease
        (``owner`` is the committing run; None: a commit outside any run). Releases the lease.
        Returns the change log entry's number (None: nothing logged)."""
        delta = latest_per_id(delta)
        with self._errors("commit"), writing(self.engine) as conn:
            gen_id = self._ensure(conn)
            # The first write takes the generation's row lock (SQLite: the database's write lock,
            # from BEGIN IMMEDIATE) for the whole transaction: commits of one generation serialise.
            held = or_(generations.c.lease_owner.is_(None), generations.c.lease_owner == owner)
            mine = update(generations).where(generations.c.gen_id == gen_id, held)
            if not conn.execute(mine.values(commits=generations.c.commits + 1)).rowcount:
                holder = self._row(conn).lease_owner
                raise GenerationBusyError(
                    f"{self.key} is held by run {holder}, which took it over from this run "
                    f"({owner or 'no run'}); nothing of this run was committed: run it again"
                )
            found = self._row(conn)
            live_change = _merge_rows(conn, gen_id, delta, fresh=not found.committed)
            kept = {**json.loads(found.meta or "{}"), **(metadata or {})}
            conn.execute(
                update(generations)
                .where(generations.c.gen_id == gen_id)
                .values(
                    committed=True,
                    meta=json.dumps(kept, sort_keys=True),
                    live=generations.c.live + live_change,
                    lease_owner=None,
                    lease_at=None,
                    **{key: str(identity.get(key) or "") for key in IDENTITY_KEYS},
                )
            )
            number = None  # a generation's first fill logs nothing: derived stages relink it all
            if change_log is not None and found.committed:
                changed = delta.filter(pc.is_in(delta["change"], value_set=pa.array(CHANGED)))
                number = ChangeLog.append(conn, change_log, changed) if changed.num_rows else None
        if self.engine.dialect.name == "postgresql" and delta.num_rows >= ANALYZE_ROWS:
            # Fresh statistics: with those of an emptier table, PostgreSQL's planner answers the
            # next look-ups from the gen_id prefix of the key alone (measured: 30 ms per 900 ids).
            with self._errors("analyze"), self.engine.connect() as conn:
                conn.exec_driver_sql(f"ANALYZE {rows.name}")
                conn.commit()
        return number

    def drop(self) -> None:
        """Forget this generation's state (rows first, in batches of the primary key order)."""
        gen_id = self._gen_id()
        if gen_id is None:
            return
        with self._errors("drop"), writing(self.engine) as conn:
            conn.execute(delete(rows).where(rows.c.gen_id == gen_id))
            conn.execute(delete(generations).where(generations.c.gen_id == gen_id))


def _insert_many(conn: Connection, table: str, columns: tuple[str, ...], types: tuple[str, ...],
                 records: list[tuple], conflict: str = "") -> None:  # fmt: skip
    """``INSERT`` many rows at the driver: on PostgreSQL one statement per batch over ``unnest`` of
    one array per column (an ``executemany`` sends a statement per row: measured 4x slower), on
    SQLite an ``executemany`` (in-process, no round trips)."""
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        arrays = ", ".join(f"%s::{t}[]" for t in types)
        sql = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {conflict}"
        conn.exec_driver_sql(sql, tuple(list(column) for column in zip(*records, strict=True)))
    else:
        marks = ", ".join(_marker(conn) for _ in columns)
        conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({marks}) {conflict}", records)


ROW_COLUMNS = ("gen_id", "id", "dt_version", "text_hash", "fields_hash", "deleted")
ROW_TYPES = ("int", "text", "int", "bigint", "bigint", "bool")
ROW_UPSERT = (
    "ON CONFLICT (gen_id, id) DO UPDATE SET dt_version = excluded.dt_version, "
    "text_hash = excluded.text_hash, fields_hash = excluded.fields_hash, deleted = excluded.deleted"
)


def _merge_rows(conn: Connection, gen_id: int, delta: pa.Table, fresh: bool = False) -> int:
    """Write the rows of ``delta`` that win over the stored ones (an upsert per row, in batches);
    the change in live ids. Memory follows the batch, not the delta. ``fresh``: the generation's
    first commit (a full run's fill), which has no stored rows to look up."""
    live_change = 0
    for part in delta.select(SCHEMA.names).to_batches(WRITE_BATCH):
        columns = part.to_pydict()
        batch = list(zip(*(columns[name] for name in SCHEMA.names), strict=True))
        priors = {} if fresh else _priors(conn, gen_id, columns["id"])
        winners = []
        for row_id, version, thash, fhash, deleted in batch:
            prior = priors.get(row_id)
            if prior is not None and prior.dt_version > version:
                continue  # a later partition already spoke about the id
            winners.append((gen_id, row_id, version, thash, fhash, bool(deleted)))
            live_change += (not deleted) - (prior is not None and not prior.deleted)
        if winners and fresh and conn.dialect.name == "postgresql":
            _copy_rows(conn, winners)
        elif winners:
            _insert_many(conn, rows.name, ROW_COLUMNS, ROW_TYPES, winners, ROW_UPSERT)
    return live_change


def _copy_rows(conn: Connection, records: list[tuple]) -> None:
    """New rows by ``COPY`` (PostgreSQL), in the caller's transaction: a full rebuild's first commit
    of every id (200k rows: 2.0 s, against 3.2 s through ``INSERT .. unnest``)."""
    raw = conn.connection.driver_connection
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY {rows.name} ({', '.join(ROW_COLUMNS)}) FROM STDIN") as copy,
    ):
        for record in records:
            copy.write_row(record)


def latest_per_id(delta: pa.Table) -> pa.Table:
    """One row per id: the greatest ``dt_version``; on a tie, the later row of ``delta``."""
    if delta.num_rows == 0:
        return delta
    order = pa.array(range(delta.num_rows), pa.int64())
    ranked = delta.append_column("_order", order).sort_by(
        [("id", "ascending"), ("dt_version", "descending"), ("_order", "descending")]
    )
    ids = ranked["id"].combine_chunks()
    keep = pa.concat_arrays([pa.array([True]), pc.not_equal(ids[1:], ids[:-1])])
    return ranked.filter(keep).drop_columns(["_order"])


class ChangeLog:
    """What each committed run changed in a table, for stages that keep data derived from it
    current (the product links follow the keyword collection's log).

    Entries are numbered in commit order, each holding the ``id`` and ``change`` (upsert: text new
    or changed; update: fields only; delete) of one run that changed something. The entry is
    written in the transaction of that run's state commit. A reader remembers the last number it
    applied (the product state's metadata, committed with the product rows). Entries are kept:
    several derived stages may read one log."""

    def __init__(self, settings: StateSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.engine = engine_for(settings)

    def latest(self) -> int:
        with db_errors(self.settings, f"read the change log {self.name}"), self.engine.connect() as conn:
            found = conn.execute(select(logs.c.latest).where(logs.c.log == self.name)).scalar_one_or_none()
        return int(found or 0)

    def since(self, applied: int) -> tuple[pa.Table, int]:
        """Every change after ``applied``, the last one per id (in log order), and the log's end."""
        query = (
            select(changes.c.seq, changes.c.id, changes.c.change)
            .where(changes.c.log == self.name, changes.c.seq > applied)
            .order_by(changes.c.seq)
        )
        last: dict[str, str] = {}
        end = applied
        with db_errors(self.settings, f"read the change log {self.name}"), self.engine.connect() as conn:
            for seq, row_id, change in conn.execute(query):
                last.pop(row_id, None)  # keep log order: the id's last change counts
                last[row_id] = change
                end = max(end, seq)
        return pa.table(
            {"id": pa.array(list(last), pa.string()), "change": pa.array(list(last.values()), pa.string())}
        ), end

    @staticmethod
    def append(conn: Connection, name: str, changed: pa.Table) -> int:
        """Add one entry to log ``name`` inside the caller's transaction; its number."""
        if not conn.execute(update(logs).where(logs.c.log == name).values(latest=logs.c.latest + 1)).rowcount:
            conn.execute(insert(logs).values(log=name, latest=1))
        number = conn.execute(select(logs.c.latest).where(logs.c.log == name)).scalar_one()
        entries = [
            (name, number, i, c)
            for i, c in zip(changed["id"].to_pylist(), changed["change"].to_pylist(), strict=True)
        ]
        for batch in _batches(entries, WRITE_BATCH):
            _insert_many(
                conn, changes.name, ("log", "seq", "id", "change"), ("text", "int", "text", "text"), batch
            )
        return number


def forget_generations(settings: StateSettings, dropped: Iterable[tuple[str, str]]) -> int:
    """Remove what the ledger keeps about dropped generations (``(store, physical name)`` pairs):
    every state one of whose stores is dropped, and the dropped collections' change logs. Returns
    how many states and logs went. Retention calls it after dropping the stores themselves."""
    dropped = set(dropped)
    if not dropped:
        return 0
    engine = engine_for(settings)
    with db_errors(settings, "forget dropped generations"), engine.connect() as conn:
        known = conn.execute(select(generations.c.key, generations.c.stores)).all()
    gone = [key for key, stores in known if set(json.loads(stores).items()) & dropped]
    for key in gone:
        IndexState(settings, key).drop()
    names = sorted(name for store, name in dropped if store == "qdrant")  # logs follow collections
    with db_errors(settings, "forget change logs"), writing(engine) as conn:
        logged = conn.execute(
            select(func.count()).select_from(logs).where(logs.c.log.in_(names))
        ).scalar_one()
        conn.execute(delete(changes).where(changes.c.log.in_(names)))
        conn.execute(delete(logs).where(logs.c.log.in_(names)))
    return len(gone) + int(logged)


def known_states(settings: StateSettings) -> list[dict[str, Any]]:
    """Every generation the ledger holds: key, live ids, model, lease holder, applied metadata."""
    with db_errors(settings, "list states"), engine_for(settings).connect() as conn:
        found = conn.execute(select(generations).order_by(generations.c.key)).all()
    return [
        {
            "key": row.key,
            "live": int(row.live),
            "model": f"{row.model_name} v{row.model_version}" if row.committed else None,
            "role": row.role,
            "lease": row.lease_owner,
            "meta": json.loads(row.meta or "{}"),
        }
        for row in found
    ]


def change_logs(settings: StateSettings) -> dict[str, int]:
    """Every change log and its latest entry's number."""
    with db_errors(settings, "list change logs"), engine_for(settings).connect() as conn:
        return dict(conn.execute(select(logs.c.log, logs.c.latest).order_by(logs.c.log)).all())


def delta_table(rows: list[tuple[str, int, int, int, bool, str]]) -> pa.Table:
    """A chunk's delta from ``(id, dt_version, text_hash, fields_hash, deleted, change)`` rows."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in DELTA_SCHEMA]
    arrays = [pa.array(list(c), f.type) for c, f in zip(columns, DELTA_SCHEMA, strict=True)]
    return pa.table(arrays, schema=DELTA_SCHEMA)


def merged_delta(paths: Iterable[str], excluded: set[str]) -> pa.Table:
    """A run's chunk deltas in one table, without ``excluded`` ids (dead-lettered by a store: they
    keep their previous state, so the next run tries them again)."""
    parts = [read_parquet(path).cast(DELTA_SCHEMA) for path in paths]
    delta = pa.concat_tables(parts) if parts else DELTA_SCHEMA.empty_table()
    if excluded and delta.num_rows:
        delta = delta.filter(pc.invert(pc.is_in(delta["id"], value_set=pa.array(sorted(excluded)))))
    return delta
