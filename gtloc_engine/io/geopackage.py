"""The results GeoPackage as a database: rows are replaced per photo inside SQLite transactions on the file itself.

Layers and tables (the schema, as data: io/results_schema.py; in words: docs/geopackage.md):
    photos      Point   one row per photo path: at the claimed place if any, else the most likely one
    candidates  Point   top-k places per photo path (rank; probability = posterior mass within radius_km)
    regions     MultiPolygon  credible regions per photo path (level 0.5 / 0.9, geodesic area, mass)
    failures    table   photos that could not be processed: path, reason, failed_at_utc
    embeddings  table   image embeddings: sha256, model_sha256, dim, embedding (float32 little-endian BLOB)
    gtloc_info  table   key/value: format "gtloc-results", format_version, engine_version

Writing. The file is a GeoPackage 1.2 written here with sqlite3 (no GDAL): the gpkg_* tables, StandardGeoPackageBinary
geometries with their envelope, an R-tree spatial index per layer with the standard triggers (the ST_* functions
they call are registered on the connection), gpkg_contents extents widened as rows arrive. A new file is built
under a temp name and linked into place (never over an existing file); from then on every change is a
transaction on the file: set_results / copy_results / set_failure / set_embedding buffer one batch of rows in
memory and commit() writes them in one short transaction (rows of a path replaced, never appended twice). A crash
or kill -9 keeps every committed batch and leaves a valid file (SQLite rolls back an unfinished transaction on
the next open). Cost per photo stays flat: indexed deletes and inserts, no whole-file rewrite, nothing held but
the open batch.

Journal: WAL on local disks (JOURNAL_MODE 'auto'). QGIS (3.22 with GDAL >= 3.4.2) opens a GeoPackage it only reads
with GDAL's NOLOCK=ON, i.e. without SQLite locks, which GDAL ignores for a file in WAL mode: in rollback-journal mode
such a reader sees pages half-way through a commit ('database disk image is malformed', tables missing), in WAL mode
never (commits go to the -wal file, readers keep a consistent snapshot; measured in bench/README.md). WAL keeps
-wal/-shm files next to the .gpkg while a connection is open, and the last commits live in the -wal file until a
checkpoint; close() checkpoints everything into the .gpkg (and SQLite removes both files when the last
connection closes). The journal mode is kept in the file, but QGIS, when it opens a GeoPackage that no other
program has open, sets it back to the rollback journal and reads without locks; such a reader cannot read the file
once the next run has made it WAL again (SQLite's 'unable to open database file': the layer shows no rows) until
QGIS reopens it (a reload, F5), and is safe from then on. open() says so in one warning line when it finds the file
so. On a network drive, where WAL's shared memory does not work (QGIS also keeps such files out
of WAL), the rollback journal ('delete') is used. A reader holding a lock past busy_timeout_s (rollback mode, or
another writer) only postpones a commit: the rows stay buffered and go with the next commit; close() waits longer
and then fails with one line.

Reading. Resume looks rows up by index (done, finished_source: path, sha256, model_sha256, given_time_local, and
surface_res_deg);
nothing is loaded whole. photos / candidates / regions / failures / embeddings read every row of the file for
tools and tests. While a store has a file open, do not open that file with GDAL (pyogrio, fiona, rasterio) in the
same process: GDAL carries its own SQLite, and its closing the file would drop this connection's POSIX locks
(sqlite.org/howtocorrupt.html, "multiple copies of SQLite"); read it from another process or with sqlite3.

A file is recognised as ours by its gtloc_info table; any other existing file (another GeoPackage, a text file,
a folder) is refused with one error line and never written to. A file of an older format version (1: gtloc before
the incremental store; 2: before the verdict 'inconclusive') is upgraded in place, in one transaction, when it is
opened for writing (UPGRADES: one step per version; every schema column the file lacks is added).

Public surface:
    PHOTO_FIELDS, CANDIDATE_FIELDS, REGION_FIELDS, FAILURE_FIELDS   field name -> kind (from results_schema)
    ResultsStore    ResultsStore.open(path) -> lookups, buffered writes, commit(), close()
    check_results_path  refuse a name that is not .gpkg or a file that is not ours, before any work starts
    check_is_geopackage refuse a file that is not a GeoPackage (SQLite with gpkg_contents) before replacing it
    JOURNAL_MODES, JOURNAL_MODE
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import sqlite3
import struct
import time
from collections import deque
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from gtloc_engine import __version__
from gtloc_engine.errors import GtlocError
from gtloc_engine.io import results_schema as schema
from gtloc_engine.io.rows import FullReads, check_fields
from gtloc_engine.io.rows import layer_geometry as _layer_geometry
from gtloc_engine.io.rows import python_value as _python_value
from gtloc_engine.io.rows import sql_value as _sql_value
from gtloc_engine.io.results_schema import (  # noqa: F401  (re-exported: the store's field kinds and names)
    CANDIDATE_FIELDS,
    EMBEDDINGS_TABLE,
    FAILURE_FIELDS,
    FORMAT,
    FORMAT_VERSION,
    GPKG_VERSION,
    INFO_TABLE,
    PHOTO_FIELDS,
    REGION_FIELDS,
)

log = logging.getLogger(__name__)

CRS = "EPSG:4326"
JOURNAL_MODES = ("auto", "wal", "delete")
JOURNAL_MODE = "auto"  # WAL on a local disk, the rollback journal ('delete') on a network drive
_NETWORK_FILE_SYSTEMS = {"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs",
                         "lustre", "gpfs", "fuse.sshfs", "sshfs", "davfs", "fuse.davfs2", "ncpfs", "coda"}
BUSY_TIMEOUT_S = 5.0  # one commit waits this long for a reader's lock, then is postponed to the next commit
CLOSE_WAIT_S = 120.0  # close() keeps trying this long before giving up with one line
MAX_PENDING_OPS = 2000  # buffered writes beyond this wait (CLOSE_WAIT_S) instead of growing in memory
_GEOMETRY = schema.GEOMETRY_COLUMN
_BUSY_WORDS = ("locked", "busy")


class ResultsStore(FullReads):
    """One results GeoPackage opened for writing: indexed lookups, buffered per-photo writes, commit per batch.

    Writes: set_results(path, photo, candidates, regions) replaces every row of that path (and drops its failure),
    copy_results(source, path, file_name) gives a path the rows of another with the same bytes, set_failure drops
    a path's results and records why, set_embedding(sha256, model, vector). They are checked against the schema at
    once (ValueError for a field or value it does not allow) and written by commit(). Rows are dicts of
    PHOTO_FIELDS / CANDIDATE_FIELDS / REGION_FIELDS (missing fields are null) plus 'geometry' (shapely or None).
    """

    def __init__(self, path: Path, db: sqlite3.Connection, journal_mode: str):
        self.path = path
        self.journal_mode = journal_mode
        self._db = db
        self._pending: deque[Callable[[], None]] = deque()  # buffered writes, not yet in a transaction
        self._applied: list[Callable[[], None]] = []  # writes in the open transaction, replayed if it is undone
        self._touched: dict[str, tuple[float, float, float, float] | None] = {}  # table -> new rows' extent

    # ------------------------------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, path: str | os.PathLike, *, journal_mode: str = JOURNAL_MODE,
             busy_timeout_s: float = BUSY_TIMEOUT_S) -> ResultsStore:
        """The results GeoPackage at `path`, created empty (and valid) if missing; GtlocError for any other file."""
        if journal_mode not in JOURNAL_MODES:
            raise ValueError(f"journal_mode {journal_mode!r} must be one of {JOURNAL_MODES}")
        path = Path(path)
        check_results_path(path)
        try:
            existed = os.path.lexists(path)
            if not existed:
                _create(path)
            db = _connect(path, busy_timeout_s)
        except (OSError, sqlite3.Error) as exc:
            raise GtlocError(f"cannot write the results GeoPackage '{path}' ({exc}); check that its folder exists and "
                             "is writable, or choose another --out") from None
        if journal_mode == "auto":
            journal_mode = "delete" if _on_network_drive(path) else "wal"
        try:
            _check_ours(path)  # someone may have put another file there since the check
            before = db.execute("PRAGMA journal_mode").fetchone()[0]
            mode = db.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()[0]
            if existed and before != "wal" and mode == "wal":
                # gtloc leaves its files in WAL; QGIS resets a GeoPackage it opens alone to the rollback journal and
                # then reads it without locks, through a connection that cannot read the file once it is WAL again.
                log.warning("'%s' was in rollback-journal mode, which QGIS sets when it opens a GeoPackage no other "
                            "program has open; it is WAL again for this run: reload (F5) a QGIS layer of this file "
                            "opened before now to see its rows", path)
            if mode != journal_mode:  # e.g. another program holds it open in WAL mode: works either way
                log.info("'%s' stays in %s journal mode (asked for %s)", path, mode, journal_mode)
            _upgrade(db, path)
        except BaseException:
            db.close()
            raise
        return cls(path, db, mode)

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Commit what is buffered (waiting up to CLOSE_WAIT_S for other programs' locks), move every commit from
        the -wal file into the .gpkg (WAL mode), and close the file."""
        if self._db is None:
            return
        try:
            self._commit_waiting(CLOSE_WAIT_S)
            self._checkpoint()
        finally:
            if self._db.in_transaction:
                self._db.rollback()
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------------------------------ lookups

    def done(self, photo_path: str, sha256: str, model_sha256: str, given_time_local: str | None = None,
             surface_res_deg: float | None = None) -> bool:
        """True when this path already has results for these bytes from this model, given the same known time, with
        surfaces of the same cell size."""
        return self._one("SELECT 1 FROM photos WHERE path = ? AND sha256 = ? AND model_sha256 = ? "
                         "AND given_time_local IS ? AND surface_res_deg IS ?",
                         (photo_path, sha256, model_sha256, given_time_local, surface_res_deg)) is not None

    def finished_source(self, sha256: str, model_sha256: str, given_time_local: str | None = None,
                        surface_res_deg: float | None = None) -> str | None:
        """A path that holds finished results for these bytes from this model, known time and cell size, or None."""
        row = self._one("SELECT path FROM photos WHERE sha256 = ? AND model_sha256 = ? AND given_time_local IS ? "
                        "AND surface_res_deg IS ? ORDER BY fid LIMIT 1",
                        (sha256, model_sha256, given_time_local, surface_res_deg))
        return None if row is None else row[0]

    def keys(self) -> list[tuple[str, str | None, str | None, str | None]]:
        """(path, sha256, model_sha256, given_time_local) of every photo row: what resume compares, nothing more."""
        self._flush_for_reading()
        return self._db.execute("SELECT path, sha256, model_sha256, given_time_local FROM photos ORDER BY fid"
                                ).fetchall()

    # ------------------------------------------------------------------------------------------ writes

    def set_results(self, photo_path: str, photo: dict, candidates: list[dict], regions: list[dict]) -> None:
        """Replace every row of `photo_path` with these (its failure, if any, is dropped)."""
        photo_row = self._feature_params(schema.PHOTOS, {**photo, "path": photo_path})
        candidate_rows = [self._feature_params(schema.CANDIDATES, {**c, "path": photo_path}) for c in candidates]
        region_rows = [self._feature_params(schema.REGIONS, {**r, "path": photo_path}) for r in regions]

        def write() -> None:
            self._delete_path(photo_path, ("photos", "candidates", "regions", "failures"))
            self._db.execute(_INSERT["photos"], photo_row)
            self._db.executemany(_INSERT["candidates"], candidate_rows)
            self._db.executemany(_INSERT["regions"], region_rows)

        self._add(write)

    def copy_results(self, source_path: str, photo_path: str, file_name: str) -> None:
        """Give `photo_path` the rows of `source_path` (same bytes, same model): one row per path, computed once."""
        def write() -> None:
            self._delete_path(photo_path, ("photos", "candidates", "regions", "failures"))
            for table in schema.LAYERS:
                names = [f.name for f in table.fields]
                values = [("?" if n in ("path", "file_name") else _quote(n)) for n in names]
                params = [photo_path, file_name] if table is schema.PHOTOS else [photo_path]
                self._db.execute(
                    f"INSERT INTO {table.name} ({_GEOMETRY}, {', '.join(map(_quote, names))}) "
                    f"SELECT {_GEOMETRY}, {', '.join(values)} FROM {table.name} WHERE path = ? ORDER BY fid",
                    (*params, source_path))

        self._add(write)

    def set_failure(self, photo_path: str, reason: str) -> None:
        """Record why `photo_path` failed; its results, if any, are dropped."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"a failure needs a reason, got {reason!r}")
        row = (photo_path, reason, dt.datetime.now(dt.UTC).isoformat())

        def write() -> None:
            self._delete_path(photo_path, ("photos", "candidates", "regions", "failures"))
            self._db.execute("INSERT INTO failures (path, reason, failed_at_utc) VALUES (?, ?, ?)", row)

        self._add(write, table="failures")

    def set_embedding(self, sha256: str, model_sha256: str, embedding: np.ndarray) -> None:
        """Store (or replace) the image embedding of these bytes under this model, as float32 little-endian."""
        vector = np.asarray(embedding, dtype="<f4").ravel()
        row = (sha256, model_sha256, int(vector.size), vector.tobytes())

        def write() -> None:
            self._db.execute(
                "INSERT INTO embeddings (sha256, model_sha256, dim, embedding) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha256, model_sha256) DO UPDATE SET dim = excluded.dim, embedding = excluded.embedding",
                row)

        self._add(write, table="embeddings")

    def commit(self) -> bool:
        """Write the buffered rows in one transaction. False when another program's lock outlasted busy_timeout_s:
        the transaction is rolled back (no lock is kept while waiting) and its rows go with the next commit."""
        try:
            self._flush()
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                self._abandon(exc)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._pending.extendleft(reversed(self._applied))  # every write is idempotent: replay them all
            self._applied.clear()
            log.warning("'%s' is locked by another program (%s); its new rows wait for the next commit",
                        self.path, exc)
            return False
        except sqlite3.Error as exc:
            self._abandon(exc)
        self._applied.clear()
        self._touched.clear()
        return True

    def save(self) -> Path:
        """commit(), waiting for other programs' locks as close() does, and move the commits from the -wal file into
        the .gpkg, so that the .gpkg alone holds them; the file's path (for older callers)."""
        self._commit_waiting(CLOSE_WAIT_S)
        self._checkpoint()
        return self.path

    # ------------------------------------------------------------------------------------------ full reads

    def _read_rows(self, sql: str) -> list:
        self._flush_for_reading()
        return self._db.execute(sql).fetchall()

    # ------------------------------------------------------------------------------------------ internals

    def _add(self, write: Callable[[], None], table: str | None = None) -> None:
        if self._db is None:
            raise GtlocError(f"results GeoPackage '{self.path}' is closed")
        self._pending.append(write)
        if table is not None:
            self._touched.setdefault(table, None)
        if len(self._pending) >= MAX_PENDING_OPS:
            self._commit_waiting(CLOSE_WAIT_S)

    def _flush(self) -> None:
        """Apply the buffered writes inside the open transaction (begun here); every write is idempotent (it first
        deletes what it replaces), so one interrupted by a lock is simply run again."""
        if not self._pending:
            return
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        while self._pending:
            self._pending[0]()
            self._applied.append(self._pending.popleft())
        self._update_contents()

    def _abandon(self, exc: sqlite3.Error) -> None:
        """A write SQLite refuses for another reason than a lock (disk full, read-only file): roll the open
        transaction back, drop the buffered rows and say so in one line (committed batches stay)."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        lost = len(self._pending) + len(self._applied)
        self._pending.clear()
        self._applied.clear()
        self._touched.clear()
        raise GtlocError(f"cannot write to '{self.path}' ({exc}); the last {lost} changes were not saved, the "
                         "photos finished before are kept; free disk space or check the file's permissions and run "
                         "again") from None

    def _checkpoint(self) -> None:
        """WAL mode: copy every committed page into the .gpkg and empty the -wal file. Best effort: frames a reader
        is still reading stay in the -wal file for the next checkpoint."""
        if self.journal_mode == "wal":
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _commit_waiting(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while not self.commit():
            if time.monotonic() > deadline:
                raise GtlocError(f"'{self.path}' stayed locked by another program for {wait_s:.0f} s, so the last "
                                 "results could not be written; close the program holding it and run again (finished "
                                 "photos are kept)")
            time.sleep(0.2)

    def _one(self, sql: str, params: tuple):
        self._flush_for_reading()  # a lookup sees this run's own writes
        return self._db.execute(sql, params).fetchone()

    def _flush_for_reading(self) -> None:
        """_flush, waiting up to CLOSE_WAIT_S for another writer's lock: a lookup must see the buffered writes."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        while True:
            try:
                return self._flush()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    self._abandon(exc)
                if time.monotonic() > deadline:
                    raise GtlocError(f"'{self.path}' stayed locked by another program for {CLOSE_WAIT_S:.0f} s; "
                                     "close the program holding it and run again") from None
                time.sleep(0.2)

    def _delete_path(self, photo_path: str, tables: tuple[str, ...]) -> None:
        for table in tables:
            self._db.execute(f"DELETE FROM {table} WHERE path = ?", (photo_path,))
            self._touched.setdefault(table, None)

    def _feature_params(self, table: schema.Table, row: dict) -> tuple:
        """(geometry blob, field values...) in column order, checked against the schema; the layer's extent grows."""
        check_fields(table, row)
        geometry = _layer_geometry(table, row.get("geometry"))
        blob = None
        if geometry is not None:
            blob, bounds = gpkg_geometry_blob(geometry)
            old = self._touched.get(table.name)
            self._touched[table.name] = bounds if old is None else (
                min(old[0], bounds[0]), min(old[1], bounds[1]), max(old[2], bounds[2]), max(old[3], bounds[3]))
        else:
            self._touched.setdefault(table.name, None)
        return (blob, *(_sql_value(table, f, row.get(f.name)) for f in table.fields))

    def _update_contents(self) -> None:
        """last_change of every table written in this transaction; layers' extents widened by their new rows."""
        now = schema.utc_datetime_text(dt.datetime.now(dt.UTC))
        for table, bounds in self._touched.items():
            if bounds is None:
                self._db.execute("UPDATE gpkg_contents SET last_change = ? WHERE table_name = ?", (now, table))
            else:
                self._db.execute(
                    "UPDATE gpkg_contents SET last_change = ?, min_x = min(ifnull(min_x, ?), ?), "
                    "min_y = min(ifnull(min_y, ?), ?), max_x = max(ifnull(max_x, ?), ?), "
                    "max_y = max(ifnull(max_y, ?), ?) WHERE table_name = ?",
                    (now, bounds[0], bounds[0], bounds[1], bounds[1], bounds[2], bounds[2], bounds[3], bounds[3],
                     table))

    def _read_features(self, table: schema.Table) -> list[dict]:
        self._flush_for_reading()
        names = table.field_names
        rows = self._db.execute(f"SELECT {_GEOMETRY}, {', '.join(map(_quote, names))} FROM {table.name} "
                                "ORDER BY fid").fetchall()
        out = []
        for blob, *values in rows:
            row = {name: _python_value(table.field(name), value) for name, value in zip(names, values)}
            row["geometry"] = geometry_from_blob(blob)
            out.append(row)
        return out


def check_results_path(path: str | os.PathLike) -> None:
    """GtlocError unless `path` ends in .gpkg and is either free or a results GeoPackage this version can read."""
    path = Path(path)
    if path.suffix.lower() != ".gpkg":
        raise GtlocError(f"results file '{path}' must end in .gpkg; name it e.g. results.gpkg")
    if os.path.lexists(path):
        _check_ours(path)


# ---------------------------------------------------------------------------------------------- geometries


def gpkg_geometry_blob(geometry: BaseGeometry) -> tuple[bytes, tuple[float, float, float, float]]:
    """StandardGeoPackageBinary (spec 2.1.3): 'GP', version 0, flags (little-endian, envelope [minx, maxx, miny,
    maxy]), srs_id, envelope, then little-endian WKB; and the (minx, miny, maxx, maxy) bounds."""
    minx, miny, maxx, maxy = shapely.bounds(geometry).tolist()
    header = struct.pack("<2sBBi4d", b"GP", 0, 0b0000_0011, schema.SRS_ID, minx, maxx, miny, maxy)
    return header + shapely.to_wkb(geometry, byte_order=1, output_dimension=2), (minx, miny, maxx, maxy)


def geometry_from_blob(blob: bytes | None) -> BaseGeometry | None:
    if blob is None:
        return None
    flags = blob[3]
    if (flags >> 4) & 1:  # empty
        return None
    return shapely.from_wkb(bytes(blob[8 + _ENVELOPE_BYTES[(flags >> 1) & 7]:]))


_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}


def _envelope(blob: bytes | None) -> tuple[float, float, float, float] | None:
    """(minx, maxx, miny, maxy) of a GeoPackage geometry blob, from its envelope or else its WKB."""
    if blob is None or len(blob) < 8 or (blob[3] >> 4) & 1:
        return None
    flags = blob[3]
    if (flags >> 1) & 7:
        return struct.unpack(("<" if flags & 1 else ">") + "4d", blob[8:40])
    geometry = shapely.from_wkb(bytes(blob[8:]))
    if geometry.is_empty:
        return None
    minx, miny, maxx, maxy = geometry.bounds
    return minx, maxx, miny, maxy


def _st(index: int) -> Callable[[bytes | None], float | None]:
    def function(blob):
        envelope = _envelope(blob)
        return None if envelope is None else envelope[index]
    return function


def _st_is_empty(blob: bytes | None) -> int | None:
    if blob is None:
        return None
    return int(_envelope(blob) is None)


# ---------------------------------------------------------------------------------------------- the file


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_defs(table: schema.Table) -> str:
    columns = [f"{schema.FID_COLUMN} INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL"]
    if table.geometry_type is not None:
        columns.append(f"{_GEOMETRY} {table.geometry_type}")
    columns += [f"{_quote(f.name)} {f.sql_type}{' NOT NULL' if f.required else ''}" for f in table.fields]
    return ", ".join(columns)


_INSERT = {t.name: f"INSERT INTO {t.name} ({_GEOMETRY}, {', '.join(map(_quote, t.field_names))}) "
                   f"VALUES ({', '.join('?' * (len(t.fields) + 1))})" for t in schema.LAYERS}

_WGS84_WKT = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
              'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",'
              '0.0174532925199433,AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],'
              'AUTHORITY["EPSG","4326"]]')

# The core tables as OGC 12-128r15 (GeoPackage 1.2) defines them (Annex C); GDAL writes the same DDL.
_CORE_SQL = (
    "CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY, "
    "organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, "
    "description TEXT)",
    "CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT "
    "UNIQUE, description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT "
    "(strftime('%Y-%m-%dT%H:%M:%fZ','now')), min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id "
    "INTEGER, CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id))",
    "CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name "
    "TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL, CONSTRAINT pk_geom_cols "
    "PRIMARY KEY (table_name, column_name), CONSTRAINT uk_gc_table_name UNIQUE (table_name), CONSTRAINT fk_gc_tn "
    "FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name), CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) "
    "REFERENCES gpkg_spatial_ref_sys (srs_id))",
    "CREATE TABLE gpkg_extensions (table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL, definition "
    "TEXT NOT NULL, scope TEXT NOT NULL, CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name))",
)
_SRS_ROWS = (
    ("Undefined Cartesian SRS", -1, "NONE", -1, "undefined", "undefined Cartesian coordinate reference system"),
    ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
    ("WGS 84 geodetic", 4326, "EPSG", 4326, _WGS84_WKT,
     "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid"),
)


def _rtree_sql(table: str) -> list[str]:
    """The R-tree of a layer's geometry column and the six triggers that keep it (spec 1.2, Annex F.3)."""
    t, c, i = table, _GEOMETRY, schema.FID_COLUMN
    r = f"rtree_{t}_{c}"
    values = f"(NEW.{i}, ST_MinX(NEW.{c}), ST_MaxX(NEW.{c}), ST_MinY(NEW.{c}), ST_MaxY(NEW.{c}))"
    return [
        f"CREATE VIRTUAL TABLE {r} USING rtree(id, minx, maxx, miny, maxy)",
        f"CREATE TRIGGER {r}_insert AFTER INSERT ON {t} WHEN (new.{c} NOT NULL AND NOT ST_IsEmpty(NEW.{c})) "
        f"BEGIN INSERT OR REPLACE INTO {r} VALUES {values}; END",
        f"CREATE TRIGGER {r}_update1 AFTER UPDATE OF {c} ON {t} WHEN OLD.{i} = NEW.{i} AND (NEW.{c} NOTNULL AND "
        f"NOT ST_IsEmpty(NEW.{c})) BEGIN INSERT OR REPLACE INTO {r} VALUES {values}; END",
        f"CREATE TRIGGER {r}_update2 AFTER UPDATE OF {c} ON {t} WHEN OLD.{i} = NEW.{i} AND (NEW.{c} ISNULL OR "
        f"ST_IsEmpty(NEW.{c})) BEGIN DELETE FROM {r} WHERE id = OLD.{i}; END",
        f"CREATE TRIGGER {r}_update3 AFTER UPDATE ON {t} WHEN OLD.{i} != NEW.{i} AND (NEW.{c} NOTNULL AND NOT "
        f"ST_IsEmpty(NEW.{c})) BEGIN DELETE FROM {r} WHERE id = OLD.{i}; INSERT OR REPLACE INTO {r} VALUES {values}; "
        "END",
        f"CREATE TRIGGER {r}_update4 AFTER UPDATE ON {t} WHEN OLD.{i} != NEW.{i} AND (NEW.{c} ISNULL OR "
        f"ST_IsEmpty(NEW.{c})) BEGIN DELETE FROM {r} WHERE id IN (OLD.{i}, NEW.{i}); END",
        f"CREATE TRIGGER {r}_delete AFTER DELETE ON {t} WHEN old.{c} NOT NULL BEGIN DELETE FROM {r} WHERE "
        f"id = OLD.{i}; END",
    ]


def _index_sql() -> list[str]:
    return [f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {name} ON {table} ({', '.join(columns)})"
            for name, table, columns, unique in schema.INDEXES]


def _create(path: Path) -> None:
    """Build an empty results GeoPackage under a temp name, then link it into place: a file at `path` is either
    absent or complete, and an existing file (another process's, or anyone's) is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with closing(_connect(temp, BUSY_TIMEOUT_S)) as db:
            db.execute(f"PRAGMA application_id = {schema.GPKG_APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {schema.GPKG_USER_VERSION}")
            db.execute("BEGIN")
            for sql in _CORE_SQL:
                db.execute(sql)
            db.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", _SRS_ROWS)
            for table in schema.TABLES:
                db.execute(f"CREATE TABLE {table.name} ({_column_defs(table)})")
                db.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id) "
                           "VALUES (?, ?, ?, ?, ?)", (table.name, table.data_type, table.name, table.description,
                                                      schema.SRS_ID if table.geometry_type else None))
                if table.geometry_type is not None:
                    db.execute("INSERT INTO gpkg_geometry_columns VALUES (?, ?, ?, ?, 0, 0)",
                               (table.name, _GEOMETRY, table.geometry_type, schema.SRS_ID))
                    for sql in _rtree_sql(table.name):
                        db.execute(sql)
                    db.execute("INSERT INTO gpkg_extensions VALUES (?, ?, 'gpkg_rtree_index', "
                               "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
                               (table.name, _GEOMETRY))
            for sql in _index_sql():
                db.execute(sql)
            db.executemany(f"INSERT INTO {INFO_TABLE} (key, value) VALUES (?, ?)", _info_rows())
            db.execute("COMMIT")
        try:
            os.link(temp, path)  # fails if `path` exists: never over another file
        except FileExistsError:
            pass  # another process made it first: it is checked as any existing file
        except OSError:  # a file system without hard links: rename, which on Windows also refuses to replace
            if not os.path.lexists(path):
                os.rename(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def _info_rows() -> list[tuple[str, str]]:
    return [("format", FORMAT), ("format_version", str(FORMAT_VERSION)), ("engine_version", __version__)]


def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection with explicit transactions and the ST_* functions the R-tree triggers call."""
    db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    for name, index in (("ST_MinX", 0), ("ST_MaxX", 1), ("ST_MinY", 2), ("ST_MaxY", 3)):
        db.create_function(name, 1, _st(index), deterministic=True)
    db.create_function("ST_IsEmpty", 1, _st_is_empty, deterministic=True)
    db.execute("PRAGMA cache_size = -16384")  # 16 MB: a batch's changes (~0.5 MB) stay in memory until its commit
    return db


def _on_network_drive(path: Path) -> bool:
    """True when `path` lies on a network file system (NFS, SMB/CIFS, ...), where SQLite's WAL mode cannot work."""
    target = os.path.realpath(path)
    if os.name == "nt":
        if target.startswith("\\\\"):  # \\server\share
            return True
        import ctypes

        drive = os.path.splitdrive(target)[0] + "\\"
        return ctypes.windll.kernel32.GetDriveTypeW(drive) == 4  # DRIVE_REMOTE
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            entries = [line.split()[1:3] for line in mounts if len(line.split()) >= 3]
    except OSError:  # not Linux: no cheap portable answer, assume a local disk
        return False
    best, fs_type = "", ""
    for mount_point, kind in entries:
        mount_point = mount_point.replace("\\040", " ")
        if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and len(mount_point) > len(best):
            best, fs_type = mount_point, kind
    return fs_type.lower() in _NETWORK_FILE_SYSTEMS


def check_is_geopackage(path: Path, what_to_do: str) -> None:
    """GtlocError ('... is not a GeoPackage; <what_to_do>') unless `path` is a GeoPackage: SQLite with
    gpkg_contents. Writers that replace a GeoPackage whole call it first, so they never overwrite another file."""
    refuse = f"'{path}' exists and is not a GeoPackage; {what_to_do}"
    if not path.is_file():
        raise GtlocError(refuse)
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.execute("SELECT count(*) FROM gpkg_contents").fetchone()
    except sqlite3.Error:
        raise GtlocError(refuse) from None


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return any(word in str(exc).lower() for word in _BUSY_WORDS)


def _check_ours(path: Path) -> None:
    """Raise GtlocError unless `path` is a results GeoPackage this version can read."""
    refuse = f"'{path}' exists and is not a gtloc results GeoPackage; choose another --out name or move that file"
    if not path.is_file():
        raise GtlocError(refuse)
    try:
        info = _read_info(path, read_only=True)
    except sqlite3.Error:
        # Not SQLite, or SQLite without our table, or ours with a transaction a killed writer left in its journal:
        # only a writable connection rolls that back (what every SQLite opener does), so look again with one.
        if not os.path.exists(f"{path}-journal"):
            raise GtlocError(refuse) from None
        try:
            info = _read_info(path, read_only=False)
        except sqlite3.Error:
            raise GtlocError(refuse) from None
    if info.get("format") != FORMAT:
        raise GtlocError(refuse)
    version = info.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise GtlocError(f"'{path}' is a gtloc results GeoPackage of format version {version!r}, newer than this "
                         f"engine reads ({FORMAT_VERSION}); update gtloc or write to another file")


def _read_info(path: Path, *, read_only: bool) -> dict[str, str]:
    target = f"{path.resolve().as_uri()}?mode=ro" if read_only else f"{path.resolve().as_uri()}?mode=rw"
    with closing(sqlite3.connect(target, uri=True, timeout=BUSY_TIMEOUT_S)) as db:
        return dict(db.execute(f"SELECT key, value FROM {INFO_TABLE}").fetchall())


# ---------------------------------------------------------------------------------------------- older files


def _upgrade(db: sqlite3.Connection, path: Path) -> None:
    """Bring a file of an older format version to FORMAT_VERSION in place, in one transaction; a file of this
    version that lacks fields added since it was written (adding a field alone keeps the version) gets them too."""
    version = int(dict(db.execute(f"SELECT key, value FROM {INFO_TABLE}").fetchall())["format_version"])
    if version == FORMAT_VERSION and not _missing_columns(db):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version, FORMAT_VERSION):
            UPGRADES[step](db)
        _add_missing_columns(db)
        db.execute(f"UPDATE {INFO_TABLE} SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION),))
        db.execute(f"UPDATE {INFO_TABLE} SET value = ? WHERE key = 'engine_version'", (__version__,))
        db.execute("UPDATE gpkg_contents SET last_change = strftime('%Y-%m-%dT%H:%M:%fZ','now') "
                   "WHERE table_name IN ('photos', ?)", (INFO_TABLE,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if version == FORMAT_VERSION:
        log.info("'%s': added the fields of this engine's results format that it lacked", path)
    else:
        log.info("'%s' upgraded from results format version %d to %d", path, version, FORMAT_VERSION)


def _upgrade_1_to_2(db: sqlite3.Connection) -> None:
    """Version 1 (written whole by GDAL): map_time was the local wall clock ('...T18:37:54.000', not a valid
    GeoPackage DATETIME) and gtloc_info had a TEXT primary key. Now map_time_local keeps that wall clock,
    map_time is its UTC time where claimed_utc_offset_min is known and null elsewhere, and gtloc_info has an
    INTEGER key; the indexes resume uses are added."""
    db.execute("ALTER TABLE photos ADD COLUMN map_time_local TEXT")
    db.execute("UPDATE photos SET map_time_local = strftime('%Y-%m-%dT%H:%M:%S', map_time) WHERE map_time IS NOT NULL")
    db.execute("UPDATE photos SET map_time = CASE WHEN map_time_local IS NOT NULL AND claimed_utc_offset_min IS NOT "
               "NULL THEN strftime('%Y-%m-%dT%H:%M:%fZ', map_time_local, printf('%+d minutes', "
               "-claimed_utc_offset_min)) END")
    rows = db.execute(f"SELECT key, value FROM {INFO_TABLE}").fetchall()
    db.execute(f"DROP TABLE {INFO_TABLE}")
    db.execute(f"CREATE TABLE {INFO_TABLE} ({_column_defs(schema.INFO)})")
    db.executemany(f"INSERT INTO {INFO_TABLE} (key, value) VALUES (?, ?)", rows)
    for sql in _index_sql():
        db.execute(sql)


def _upgrade_2_to_3(db: sqlite3.Connection) -> None:
    """Version 3 allows the verdict 'inconclusive' (place_verdict, time_verdict, verdict) and adds fields
    (place_evidence, time_evidence, surface_res_deg, thumbnail, time_plot, and those added alongside): every column
    of the schema that the file lacks is added, NULL in the rows already there. Those rows keep the verdicts the
    version-2 rule gave them (which never said inconclusive); their NULL place_evidence / time_evidence tell them
    apart until they are computed again."""
    _add_missing_columns(db)


def _missing_columns(db: sqlite3.Connection) -> list[tuple[schema.Table, schema.Field]]:
    """(table, field) of every schema field whose column the file lacks."""
    missing = []
    for table in schema.TABLES:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({_quote(table.name)})")}
        missing += [(table, f) for f in table.fields if f.name not in present]
    return missing


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """ALTER TABLE ... ADD COLUMN for every missing schema field, NULL in existing rows; a missing NOT NULL field
    cannot be added that way, and no version has added one."""
    for table, f in _missing_columns(db):
        if f.required:
            raise GtlocError(f"results GeoPackage lacks the required column {table.name}.{f.name}; it cannot be "
                             "upgraded in place: write to a new file")
        db.execute(f"ALTER TABLE {_quote(table.name)} ADD COLUMN {_quote(f.name)} {f.sql_type}")


UPGRADES: dict[int, Callable[[sqlite3.Connection], None]] = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3}  # from version
