"""Where results go: the interface every results store implements, and the one place that picks a store for a
target (`gtloc predict --out`, the worker's `out_gpkg`, `gtloc search`'s collection).

Targets:
    RESULTS.gpkg                                   a results GeoPackage on disk (io/geopackage.py)
    postgresql://[user@]host[:port]/CASE[?...]     a PostGIS case: one database (io/postgis.py); postgres:// too,
                                                   and a socket folder as ?host=/run/postgresql
    service=NAME                                   a libpq connection service (pg_service.conf) naming the case

Both stores have the same tables, fields and meanings (docs/geopackage.md), the same resume keys (path, sha256,
model_sha256, given_time_local) and the same write semantics: a path's rows are replaced, never added twice; a
batch is one transaction. A password is never part of a target (it would show in the process list, the shell's
history and logs): libpq takes it from PGPASSWORD or the password file (~/.pgpass, PGPASSFILE), and a target that
holds one is refused with one line.

This module imports nothing heavy (the worker's protocol parser uses it); psycopg is imported when a PostGIS target
is opened.

Public surface:
    Store                        the store interface (a Protocol): lookups, buffered writes, commit(), close(), reads
    is_database_target(target)   True for a PostGIS target (URL or service), False for a file path
    database_conninfo(target)    the libpq parameters of a PostGIS target; GtlocError for a password or a bad URL
    store_target(value)          a target as the engine keeps it: the text of a PostGIS target, else a Path
    check_store_target(target)   refuse a bad target before any work starts (a GeoPackage name, a foreign case...)
    open_store(target)           the store of a target, opened for writing
    psycopg_module()             psycopg, or GtlocError naming the extra to install
    shown_target(target)         a target for messages, any password masked
    first_line(exc)              an exception's first line, for one-line errors
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gtloc_engine.errors import GtlocError

if TYPE_CHECKING:
    import numpy as np

_URL_RE = re.compile(r"\Apostgres(ql)?://", re.IGNORECASE)
_SERVICE_RE = re.compile(r"\Aservice\s*=\s*\S", re.IGNORECASE)


class Store(Protocol):
    """What the pipeline, the worker and the tests use of a results store (io/geopackage.ResultsStore,
    io/postgis.PostgisStore). Writes are checked against the schema at once (ValueError) and buffered; commit()
    writes the buffer in one transaction; lookups see this store's own buffered writes."""

    path: Path | str  # what the store writes to: the .gpkg path, or the PostGIS target as given

    def done(self, photo_path: str, sha256: str, model_sha256: str, given_time_local: str | None = None,
             surface_res_deg: float | None = None) -> bool:
        """True when this path already has results for these bytes from this model, given the same known time, with
        surfaces of the same cell size (None: a model without places, whose rows record none)."""

    def finished_source(self, sha256: str, model_sha256: str, given_time_local: str | None = None,
                        surface_res_deg: float | None = None) -> str | None:
        """A path that holds finished results for these bytes from this model, known time and cell size, or None."""

    def keys(self) -> list[tuple[str, str | None, str | None, str | None]]:
        """(path, sha256, model_sha256, given_time_local) of every photo row."""

    def set_results(self, photo_path: str, photo: dict, candidates: list[dict], regions: list[dict]) -> None:
        """Replace every row of `photo_path` with these (its failure, if any, is dropped)."""

    def copy_results(self, source_path: str, photo_path: str, file_name: str) -> None:
        """Give `photo_path` the rows of `source_path` (same bytes, same model)."""

    def set_failure(self, photo_path: str, reason: str) -> None:
        """Record why `photo_path` failed; its results, if any, are dropped."""

    def set_embedding(self, sha256: str, model_sha256: str, embedding: np.ndarray) -> None:
        """Store (or replace) the image embedding of these bytes under this model."""

    def commit(self) -> bool:
        """Write the buffered rows in one transaction; False when they were postponed to the next commit."""

    def close(self) -> None:
        """Commit what is buffered and close."""

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc_info) -> None: ...

    @property
    def photos(self) -> dict[str, dict]: ...

    @property
    def candidates(self) -> dict[str, list[dict]]: ...

    @property
    def regions(self) -> dict[str, list[dict]]: ...

    @property
    def failures(self) -> dict[str, dict]: ...

    @property
    def embeddings(self) -> dict[tuple[str, str], np.ndarray]: ...


def is_database_target(target: str | os.PathLike | None) -> bool:
    """True for postgresql://... / postgres://... and service=NAME; False for a file path (or None)."""
    if target is None or isinstance(target, Path):
        return False
    text = os.fspath(target)
    return bool(_URL_RE.match(text) or _SERVICE_RE.match(text))


def database_conninfo(target: str) -> dict[str, str]:
    """The libpq parameters a PostGIS target names; GtlocError (one line) for a password in it or a target libpq
    cannot parse."""
    psycopg = psycopg_module()
    try:
        params = psycopg.conninfo.conninfo_to_dict(target)
    except psycopg.ProgrammingError as exc:
        raise GtlocError(f"PostGIS target '{shown_target(target)}' cannot be read ({first_line(exc)}); write it as "
                         "postgresql://USER@HOST/CASE or service=NAME") from None
    if params.get("password"):
        raise GtlocError(f"PostGIS target '{shown_target(target)}' holds a password; never put one on the command "
                         "line: set PGPASSWORD or add it to ~/.pgpass (or a pg_service.conf service) and give the URL "
                         "without it")
    return {key: str(value) for key, value in params.items()}


def store_target(value: str | os.PathLike | None) -> Path | str | None:
    """A target as the engine keeps it: the text of a PostGIS target (a Path would fold its '//'), else a Path."""
    if value is None:
        return None
    return os.fspath(value) if is_database_target(value) else Path(value)


def check_store_target(target: str | os.PathLike) -> None:
    """Before any work starts: GtlocError for a GeoPackage name or file that is not ours, or a PostGIS target that
    holds a password, cannot be reached, is not a gtloc case or cannot be written by this role."""
    if is_database_target(target):
        from gtloc_engine.io.postgis import PostgisStore

        PostgisStore.open(os.fspath(target)).close()
    else:
        from gtloc_engine.io.geopackage import check_results_path

        check_results_path(target)


def open_store(target: str | os.PathLike) -> Store:
    """The results store of `target` opened for writing: a PostGIS case, or a results GeoPackage (created if
    missing); GtlocError (one line) for anything else."""
    if is_database_target(target):
        from gtloc_engine.io.postgis import PostgisStore

        return PostgisStore.open(os.fspath(target))
    from gtloc_engine.io.geopackage import ResultsStore

    return ResultsStore.open(target)


def psycopg_module():
    try:
        import psycopg
    except ImportError:
        raise GtlocError("a PostGIS target needs psycopg 3: pip install 'gtloc-engine[postgis]'") from None
    return psycopg


def shown_target(target: str) -> str:
    """The target with any password replaced by '***', for messages."""
    masked = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", target)
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", masked, flags=re.IGNORECASE)


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
