"""A PostGIS case: the results store of a team, one PostgreSQL database that several analysts and cluster workers
write to at once and QGIS reads live (docs/team-server.md).

The same tables, fields and meanings as the results GeoPackage (io/results_schema.py, docs/geopackage.md; the
column types in PostGIS are listed there): layers photos, candidates (geometry(Point, 4326)) and regions
(geometry(MultiPolygon, 4326), GiST-indexed), tables failures, embeddings (float32 little-endian bytea) and
gtloc_info, in the connection's current schema (normally public). The same store interface (io/store.py): the
pipeline, the worker, the cluster runner and search use it as they use a GeoPackage.

Writing. set_results / copy_results / set_failure / set_embedding buffer one batch in memory; commit() writes it in
one transaction. Every transaction first takes a transaction-level advisory lock (pg_advisory_xact_lock) on each
photo path and each embedding key (sha256, model_sha256) it writes, in one sorted order: two writers (two
`gtloc predict` runs on overlapping folders, cluster workers, a retried task) never interleave on a path and never
deadlock, and since a path's rows are deleted and inserted under its lock, a path has one set of rows whatever the
timing. Embeddings are upserts (INSERT ... ON CONFLICT (sha256, model_sha256) DO UPDATE). A crash, kill -9 or lost
connection rolls the open transaction back on the server: every committed batch stays, nothing is half written.
A lookup (done, finished_source, keys) first commits what is buffered, so it sees this store's own writes.

Opening. The target is a postgresql:// URL or service=NAME (io/store.py: never with a password in it; libpq
reads PGPASSWORD or ~/.pgpass). An empty database gets the tables (and PostGIS, when the role may create it), all
in one transaction under an advisory lock, so two first writers cannot both create them. A database whose tables
carry our names but no gtloc_info, or whose gtloc_info names another format or a newer version, is refused with
one line and left alone; so is a role that may only read (it can still search). A case of an older format
version gets the columns it lacks (ALTER TABLE ... ADD COLUMN IF NOT EXISTS) in one transaction.

Public surface:
    PostgisStore                  PostgisStore.open(target) -> the Store interface of io/store.py
    PG_TYPES                      field kind -> PostgreSQL type
    read_collection_rows(target, model_sha256)  (embedding rows, photo records) for inference/search/collection.py
    collection_version(target)    what changes when a case's photos or embeddings change (caches key on it)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from gtloc_engine import __version__
from gtloc_engine.errors import GtlocError
from gtloc_engine.io import results_schema as schema
from gtloc_engine.io.results_schema import FORMAT, FORMAT_VERSION, INFO_TABLE
from gtloc_engine.io.rows import FullReads, check_fields, layer_geometry, python_value, sql_value
from gtloc_engine.io.store import database_conninfo, first_line, psycopg_module, shown_target

log = logging.getLogger(__name__)

PG_TYPES = {"str": "text", "float": "double precision", "int": "bigint", "bool": "boolean",
            "datetime": "timestamp with time zone", "blob": "bytea"}
_PG_GEOMETRY = {"POINT": "Point", "MULTIPOLYGON": "MultiPolygon"}
_GEOMETRY = schema.GEOMETRY_COLUMN
_FID = schema.FID_COLUMN
CONNECT_TIMEOUT_S = 15
LOCK_TIMEOUT_S = 120  # a commit waits this long for another session's locks, then stops the run with one line
MAX_PENDING_OPS = 2000  # buffered writes beyond this are committed at once
_RETRIES = 3  # a transaction the server aborts for a deadlock or a lost connection is replayed this often
_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"gtloc schema").digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class _Op:
    """One buffered write: the advisory lock keys it needs and the statements it runs (idempotent: it first
    deletes what it replaces, so a transaction that is rolled back is simply run again)."""

    locks: tuple[int, ...]
    write: Callable


class PostgisStore(FullReads):
    """One PostGIS case opened for writing (the Store interface of io/store.py)."""

    def __init__(self, target: str, conn):
        self.path = target  # what summaries and messages name: the target as given (it holds no password)
        self._conn = conn
        self._pending: list[_Op] = []

    # ------------------------------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, target: str) -> PostgisStore:
        """The case at `target`, its tables created if the database has none; GtlocError (one line) for a target
        with a password, a server that cannot be reached, a database that is not a gtloc case, a read-only role."""
        conn = _connect(target)
        try:
            _prepare(conn, target, write=True)
        except BaseException:
            conn.close()
            raise
        return cls(target, conn)

    def __enter__(self) -> PostgisStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Commit what is buffered and close the connection."""
        if self._conn is None:
            return
        try:
            self.commit()
        finally:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------------------------------ lookups

    def done(self, photo_path: str, sha256: str, model_sha256: str, given_time_local: str | None = None,
             surface_res_deg: float | None = None) -> bool:
        return self._one("SELECT 1 FROM photos WHERE path = %s AND sha256 = %s AND model_sha256 = %s "
                         "AND given_time_local IS NOT DISTINCT FROM %s AND surface_res_deg IS NOT DISTINCT FROM %s",
                         (photo_path, sha256, model_sha256, given_time_local, surface_res_deg)) is not None

    def finished_source(self, sha256: str, model_sha256: str, given_time_local: str | None = None,
                        surface_res_deg: float | None = None) -> str | None:
        row = self._one("SELECT path FROM photos WHERE sha256 = %s AND model_sha256 = %s "
                        "AND given_time_local IS NOT DISTINCT FROM %s AND surface_res_deg IS NOT DISTINCT FROM %s "
                        "ORDER BY fid LIMIT 1", (sha256, model_sha256, given_time_local, surface_res_deg))
        return None if row is None else row[0]

    def keys(self) -> list[tuple[str, str | None, str | None, str | None]]:
        self.commit()
        return [tuple(r) for r in self._query("SELECT path, sha256, model_sha256, given_time_local FROM photos "
                                              "ORDER BY fid")]

    # ------------------------------------------------------------------------------------------ writes

    def set_results(self, photo_path: str, photo: dict, candidates: list[dict], regions: list[dict]) -> None:
        photo_row = _feature_params(schema.PHOTOS, {**photo, "path": photo_path})
        candidate_rows = [_feature_params(schema.CANDIDATES, {**c, "path": photo_path}) for c in candidates]
        region_rows = [_feature_params(schema.REGIONS, {**r, "path": photo_path}) for r in regions]

        def write(cur) -> None:
            _delete_path(cur, photo_path)
            cur.execute(_INSERT["photos"], photo_row)
            if candidate_rows:
                cur.executemany(_INSERT["candidates"], candidate_rows)
            if region_rows:
                cur.executemany(_INSERT["regions"], region_rows)

        self._add(_Op((_path_lock(photo_path),), write))

    def copy_results(self, source_path: str, photo_path: str, file_name: str) -> None:
        def write(cur) -> None:
            _delete_path(cur, photo_path)
            for table in schema.LAYERS:
                names = table.field_names
                values = [("%s" if n in ("path", "file_name") else _quote(n)) for n in names]
                params = [photo_path, file_name] if table is schema.PHOTOS else [photo_path]
                cur.execute(f"INSERT INTO {table.name} ({_GEOMETRY}, {', '.join(map(_quote, names))}) "
                            f"SELECT {_GEOMETRY}, {', '.join(values)} FROM {table.name} WHERE path = %s "
                            f"ORDER BY {_FID}", (*params, source_path))

        self._add(_Op((_path_lock(photo_path), _path_lock(source_path)), write))

    def set_failure(self, photo_path: str, reason: str) -> None:
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"a failure needs a reason, got {reason!r}")
        row = (photo_path, reason, dt.datetime.now(dt.UTC).isoformat())

        def write(cur) -> None:
            _delete_path(cur, photo_path)
            cur.execute("INSERT INTO failures (path, reason, failed_at_utc) VALUES (%s, %s, %s)", row)

        self._add(_Op((_path_lock(photo_path),), write))

    def set_embedding(self, sha256: str, model_sha256: str, embedding: np.ndarray) -> None:
        vector = np.asarray(embedding, dtype="<f4").ravel()
        row = (sha256, model_sha256, int(vector.size), vector.tobytes())

        def write(cur) -> None:
            cur.execute("INSERT INTO embeddings (sha256, model_sha256, dim, embedding) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (sha256, model_sha256) DO UPDATE SET dim = excluded.dim, "
                        "embedding = excluded.embedding", row)

        self._add(_Op((_embedding_lock(sha256, model_sha256),), write))

    def commit(self) -> bool:
        """Write the buffered rows in one transaction, after taking every advisory lock they need in one sorted
        order. A deadlock the server broke anyway, or a connection lost on the way, replays the transaction (on a
        new connection); any other refusal drops the buffer with one line (committed batches stay)."""
        if not self._pending:
            return True
        if self._conn is None:
            raise GtlocError(f"PostGIS case '{self.path}' is closed")
        psycopg = psycopg_module()
        errors = psycopg.errors
        locks = sorted({key for op in self._pending for key in op.locks})
        for attempt in range(_RETRIES + 1):
            try:
                with self._conn.transaction(), self._conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, i) "
                                "ORDER BY i", (locks,))
                    for op in self._pending:
                        op.write(cur)
                break
            except errors.LockNotAvailable:
                self._abandon(f"it stayed locked by another session for {LOCK_TIMEOUT_S} s")
            except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
                if attempt == _RETRIES:
                    self._abandon(first_line(exc))
                log.info("'%s': %s; replaying the batch", self.path, first_line(exc))
                time.sleep(0.1 * (attempt + 1))
            except psycopg.OperationalError as exc:
                if attempt == _RETRIES:
                    self._abandon(f"lost the connection: {first_line(exc)}")
                log.warning("'%s': %s; reconnecting", shown_target(self.path), first_line(exc))
                time.sleep(1.0 * (attempt + 1))
                self._reconnect()
            except psycopg.Error as exc:
                self._abandon(first_line(exc))
        self._pending.clear()
        return True

    # ------------------------------------------------------------------------------------------ full reads

    def _read_rows(self, sql: str) -> list:
        self.commit()
        return self._query(sql)

    # ------------------------------------------------------------------------------------------ internals

    def _add(self, op: _Op) -> None:
        if self._conn is None:
            raise GtlocError(f"PostGIS case '{self.path}' is closed")
        self._pending.append(op)
        if len(self._pending) >= MAX_PENDING_OPS:
            self.commit()

    def _abandon(self, reason: str) -> None:
        lost = len(self._pending)
        self._pending.clear()
        raise GtlocError(f"cannot write to the PostGIS case '{shown_target(self.path)}' ({reason}); the last "
                         f"{lost} changes were not saved, the photos finished before are kept; fix that and run again")

    def _reconnect(self) -> None:
        try:
            self._conn.close()
        finally:
            self._conn = _connect(self.path)

    def _one(self, sql: str, params: tuple):
        self.commit()  # a lookup sees this store's own writes
        rows = self._query(sql, params)
        return rows[0] if rows else None

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def _read_features(self, table: schema.Table) -> list[dict]:
        self.commit()
        names = table.field_names
        rows = self._query(f"SELECT ST_AsBinary({_GEOMETRY}), {', '.join(map(_quote, names))} FROM {table.name} "
                           f"ORDER BY {_FID}")
        out = []
        for wkb, *values in rows:
            row = {name: _from_pg(table.field(name), value) for name, value in zip(names, values)}
            row["geometry"] = None if wkb is None else shapely.from_wkb(bytes(wkb))
            out.append(row)
        return out


# ---------------------------------------------------------------------------------------------- reading for search


def read_collection_rows(target: str, model_sha256: str) -> tuple[list[tuple[str, int, bytes]], list[dict]]:
    """The embeddings of one model, (sha256, dim, float32 LE bytes) in sha256 order, and the photo records search
    reads (path, sha256, claimed and predicted places, claimed time): what collection.py reads from a GeoPackage.
    Needs only SELECT (a viewer's role searches). GtlocError (one line) when no embeddings are from this model."""
    conn = _connect(target)
    try:
        _prepare(conn, target, write=False)
        with conn.cursor() as cur:
            cur.execute("SELECT sha256, dim, embedding FROM embeddings WHERE model_sha256 = %s ORDER BY sha256",
                        (model_sha256,))
            rows = [(sha, dim, bytes(blob)) for sha, dim, blob in cur.fetchall()]
            if not rows:
                cur.execute("SELECT DISTINCT model_sha256 FROM embeddings")
                models = [m for (m,) in cur.fetchall()]
                raise GtlocError(
                    f"PostGIS case '{shown_target(target)}' holds no embeddings from this checkpoint (sha256 "
                    f"{model_sha256[:12]}...) but from {', '.join(m[:12] + '...' for m in models) or 'no model'}; "
                    "search with the checkpoint that made them, or run gtloc predict on the photos with this one first")
            columns = ("path", "sha256", "claimed_lat_deg", "claimed_lon_deg", "pred_lat_deg", "pred_lon_deg",
                       "claimed_time_local")
            cur.execute(f"SELECT {', '.join(columns)} FROM photos WHERE sha256 IN "
                        "(SELECT sha256 FROM embeddings WHERE model_sha256 = %s)", (model_sha256,))
            photos = [dict(zip(columns, r)) for r in cur.fetchall()]
    finally:
        conn.close()
    return rows, photos


def collection_version(target: str) -> tuple:
    """(target, rows and highest fid of photos and of embeddings): every write adds rows with new fids, so a cache
    keyed on it (the worker's searchers) is dropped when the case changes."""
    conn = _connect(target)
    try:
        _prepare(conn, target, write=False)
        with conn.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM photos), (SELECT max(fid) FROM photos), "
                        "(SELECT count(*) FROM embeddings), (SELECT max(fid) FROM embeddings)")
            return (target, *cur.fetchone())
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- connection, tables


def _connect(target: str):
    """A connection in autocommit mode (transactions are explicit), with a lock timeout; GtlocError (one line)
    naming what to do for a password, a server or a database that is not there."""
    database_conninfo(target)  # refuses a password in the target before anything is sent
    psycopg = psycopg_module()
    try:
        conn = psycopg.connect(target, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                               application_name=f"gtloc {__version__}")
    except psycopg.OperationalError as exc:
        reason = first_line(exc)
        if "password" in reason.lower():
            hint = "set PGPASSWORD or add the password to ~/.pgpass (docs/team-server.md)"
        elif "does not exist" in reason:
            hint = "create the database first (createdb, docs/team-server.md) or check its name"
        else:
            hint = "check that the server runs and the host, port and user are right"
        raise GtlocError(f"cannot connect to the PostGIS case '{shown_target(target)}' ({reason}); {hint}"
                         ) from None
    conn.execute(f"SET lock_timeout = '{int(LOCK_TIMEOUT_S)}s'")
    return conn


def _prepare(conn, target: str, *, write: bool) -> None:
    """Check the database is a gtloc case of a format this engine reads (creating the tables in an empty one when
    writing), in one transaction under an advisory lock; GtlocError (one line) otherwise."""
    psycopg = psycopg_module()
    shown = shown_target(target)
    try:
        with conn.transaction(), conn.cursor() as cur:
            if write:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                        "AND table_name = ANY(%s)", ([t.name for t in schema.TABLES],))
            existing = {name for (name,) in cur.fetchall()}
            if INFO_TABLE not in existing:
                if existing:
                    raise GtlocError(f"database '{shown}' has tables named {', '.join(sorted(existing))} but is not a "
                                     "gtloc case (no gtloc_info table); choose another database or schema")
                if not write:
                    raise GtlocError(f"'{shown}' is not a gtloc case yet (no gtloc_info table); make it with gtloc "
                                     f"predict PHOTOS --model CKPT --out '{shown}'")
                _ensure_postgis(cur, shown)
                _create_tables(cur)
                log.info("'%s': created the gtloc tables (format version %d)", shown, FORMAT_VERSION)
                return
            cur.execute(f"SELECT key, value FROM {INFO_TABLE}")
            info = dict(cur.fetchall())
            if info.get("format") != FORMAT:
                raise GtlocError(f"database '{shown}' has a gtloc_info table that is not gtloc's (format "
                                 f"{info.get('format')!r}); choose another database or schema")
            version = info.get("format_version", "")
            if not version.isdigit() or int(version) > FORMAT_VERSION:
                raise GtlocError(f"PostGIS case '{shown}' is of format version {version!r}, newer than this engine "
                                 f"reads ({FORMAT_VERSION}); update gtloc")
            if not write:
                return
            cur.execute("SELECT bool_and(has_table_privilege(t, 'INSERT') AND has_table_privilege(t, 'DELETE')) "
                        "FROM unnest(%s::text[]) AS t", ([t.name for t in schema.TABLES if t is not schema.INFO],))
            if not cur.fetchone()[0]:
                cur.execute("SELECT current_user")
                raise GtlocError(f"role '{cur.fetchone()[0]}' may only read the PostGIS case '{shown}'; ask its "
                                 "owner for an analyst role to write (docs/team-server.md); searching works as it is")
            if int(version) < FORMAT_VERSION:
                _upgrade(cur, int(version))
                log.info("'%s' upgraded from results format version %s to %d", shown, version, FORMAT_VERSION)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise GtlocError(f"cannot open the PostGIS case '{shown}' ({first_line(exc)}); its owner must create or "
                         "upgrade its tables once (docs/team-server.md)") from None
    except psycopg.Error as exc:
        raise GtlocError(f"cannot open the PostGIS case '{shown}' ({first_line(exc)})") from None


def _ensure_postgis(cur, shown: str) -> None:
    cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'")
    if cur.fetchone() is not None:
        return
    psycopg = psycopg_module()
    try:
        cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    except psycopg.errors.InsufficientPrivilege:
        raise GtlocError(f"database '{shown}' has no PostGIS and this role may not add it; ask its administrator to "
                         "run CREATE EXTENSION postgis in it (docs/team-server.md)") from None
    except psycopg.Error as exc:
        raise GtlocError(f"database '{shown}' has no PostGIS and it cannot be added ({first_line(exc)}); install "
                         "PostGIS on the server (Debian: postgresql-15-postgis-3)") from None


def _column_defs(table: schema.Table) -> str:
    columns = [f"{_FID} bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"]
    if table.geometry_type is not None:
        columns.append(f"{_GEOMETRY} geometry({_PG_GEOMETRY[table.geometry_type]}, {schema.SRS_ID})")
    columns += [_column_def(f) for f in table.fields]
    return ", ".join(columns)


def _column_def(field: schema.Field) -> str:
    return f"{_quote(field.name)} {PG_TYPES[field.kind]}{' NOT NULL' if field.required else ''}"


def _create_tables(cur) -> None:
    for table in schema.TABLES:
        cur.execute(f"CREATE TABLE {table.name} ({_column_defs(table)})")
        cur.execute(f"COMMENT ON TABLE {table.name} IS {_literal(table.description)}")  # no parameters in DDL
        if table.geometry_type is not None:
            cur.execute(f"CREATE INDEX {table.name}_{_GEOMETRY}_idx ON {table.name} USING gist ({_GEOMETRY})")
    for name, table, columns, unique in schema.INDEXES:
        cur.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {name} ON {table} "
                    f"({', '.join(map(_quote, columns))})")
    cur.executemany(f"INSERT INTO {INFO_TABLE} (key, value) VALUES (%s, %s)",
                    [("format", FORMAT), ("format_version", str(FORMAT_VERSION)), ("engine_version", __version__)])


def _upgrade(cur, version: int) -> None:
    """Bring a case of an older format version to FORMAT_VERSION: PostGIS cases began at version 2, and every
    version since only added fields, so each table gets the columns it lacks (a later step that changes values
    goes here too)."""
    for table in schema.TABLES:
        for field in table.fields:
            cur.execute(f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {_column_def(field)}")
    cur.execute(f"UPDATE {INFO_TABLE} SET value = %s WHERE key = 'format_version'", (str(FORMAT_VERSION),))
    cur.execute(f"UPDATE {INFO_TABLE} SET value = %s WHERE key = 'engine_version'", (__version__,))


# ---------------------------------------------------------------------------------------------- rows


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_INSERT = {t.name: f"INSERT INTO {t.name} ({_GEOMETRY}, {', '.join(map(_quote, t.field_names))}) "
                   f"VALUES (ST_GeomFromWKB(%s, {schema.SRS_ID}), {', '.join(['%s'] * len(t.fields))})"
           for t in schema.LAYERS}


def _feature_params(table: schema.Table, row: dict) -> tuple:
    """(WKB or None, field values...) in column order, checked against the schema as the GeoPackage checks them."""
    check_fields(table, row)
    geometry: BaseGeometry | None = layer_geometry(table, row.get("geometry"))
    wkb = None if geometry is None else shapely.to_wkb(geometry, output_dimension=2)
    return (wkb, *(_to_pg(f, sql_value(table, f, row.get(f.name))) for f in table.fields))


def _to_pg(field: schema.Field, value):
    if value is None:
        return None
    if field.kind == "bool":
        return bool(value)  # sql_value gives SQLite's 0/1
    return value


def _from_pg(field: schema.Field, value):
    if isinstance(value, dt.datetime):  # timestamptz: the GeoPackage's UTC text, as the other store returns it
        return schema.utc_datetime_text(value)
    return python_value(field, value)


def _delete_path(cur, photo_path: str) -> None:
    for table in ("photos", "candidates", "regions", "failures"):
        cur.execute(f"DELETE FROM {table} WHERE path = %s", (photo_path,))


def _path_lock(photo_path: str) -> int:
    return _lock_key(b"path\0" + photo_path.encode("utf-8", "surrogateescape"))


def _embedding_lock(sha256: str, model_sha256: str) -> int:
    return _lock_key(f"embedding\0{sha256}\0{model_sha256}".encode())


def _lock_key(data: bytes) -> int:
    """A signed 64-bit advisory lock key (collisions only make two writers wait for each other)."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big", signed=True)
