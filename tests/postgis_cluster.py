"""A throwaway PostgreSQL 15 + PostGIS server for tests, shared by the engine suite and the QGIS suite (standard
library only: the admin work goes through psql, so QGIS's Python needs no driver).

initdb into a temp folder, a server listening on a unix socket in that folder only (no TCP port), fsync off (a
test server need not survive a power cut; the tests kill clients, never the server), databases made on demand,
everything stopped and removed at the end. initdb refuses to run as root, so as root the server runs as the
unprivileged user `nobody`, which owns the folder; root's clients reach its socket anyway.

    PgServer.start(root) -> server | raises PgUnavailable(reason)   where the binaries or `nobody` are missing
    server.create_database(name, postgis=True) -> the case URL (postgresql://gtloc_admin@/NAME?host=SOCKET)
    server.url(database, user)    a URL without a password (passwords come from PGPASSWORD / a pgpass file)
    server.psql(sql, database)    run SQL as the superuser, return psql's unaligned output
    server.add_role(name, password=None)  a login role; with a password it must give it (scram-sha-256)
    server.stop()
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

PG_BIN = Path(os.environ.get("GTLOC_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
ADMIN = "gtloc_admin"
PASSWORD_GROUP = "gtloc_password_login"  # members must give a password: what PGPASSWORD / pgpass tests need
SETUP_HINT = "install them with `bash .ci/setup-postgis` (Debian: postgresql-15 postgresql-15-postgis-3)"


class PgUnavailable(Exception):
    """PostgreSQL or PostGIS cannot run here: the reason, for pytest.skip."""


class PgServer:
    def __init__(self, root: Path, run_as: str | None):
        self.root = root
        self.data = root / "data"
        self.socket_dir = root  # short: a unix socket path has at most 107 bytes
        self.run_as = run_as

    # ------------------------------------------------------------------------------------------ life

    @classmethod
    def start(cls) -> PgServer:
        for tool in ("initdb", "pg_ctl", "psql"):
            if not (PG_BIN / tool).is_file():
                raise PgUnavailable(f"PostgreSQL 15 is not installed ({PG_BIN / tool} missing); {SETUP_HINT}")
        if not Path("/usr/share/postgresql/15/extension/postgis.control").is_file():
            raise PgUnavailable(f"PostGIS for PostgreSQL 15 is not installed; {SETUP_HINT}")
        run_as = None
        root = Path(tempfile.mkdtemp(prefix="gtloc-pg-"))
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("nobody")
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                raise PgUnavailable("running as root and there is no user 'nobody' for initdb to run as") from None
            run_as = "nobody"
            os.chown(root, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
        server = cls(root, run_as)
        try:
            server._initdb()
            server._pg_ctl("start", "-w", "-t", "60", "-l", str(root / "server.log"), "-o",
                           f"-c listen_addresses='' -c unix_socket_directories='{server.socket_dir}' -c fsync=off "
                           "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
                           "-c shared_buffers=32MB")
            server.psql(f"CREATE ROLE {PASSWORD_GROUP} NOLOGIN")
        except (subprocess.CalledProcessError, OSError) as exc:
            log = (root / "server.log").read_text(errors="replace")[-2000:] if (root / "server.log").exists() else ""
            server.stop()
            stderr = getattr(exc, "stderr", "") or ""
            raise PgUnavailable(f"the test PostgreSQL server did not start ({exc}; {stderr.strip()[-500:]} "
                                f"{log.strip()})") from None
        return server

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "immediate", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ use

    def url(self, database: str, user: str = ADMIN) -> str:
        return f"postgresql://{user}@/{database}?host={self.socket_dir}"

    def psql(self, sql: str, database: str = "postgres", user: str = ADMIN, env: dict | None = None) -> str:
        proc = subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                               str(self.socket_dir), "-U", user, "-d", database, "-c", sql], capture_output=True,
                              text=True, timeout=120, check=False, env={**_clean_env(), **(env or {})})
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, f"psql -c {sql!r}", proc.stdout, proc.stderr)
        return proc.stdout.strip()

    def create_database(self, name: str, *, postgis: bool = True, owner: str = ADMIN) -> str:
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        if postgis:
            self.psql("CREATE EXTENSION postgis", database=name)
        return self.url(name)

    def add_role(self, name: str, password: str | None = None) -> None:
        self.psql(f'CREATE ROLE "{name}" LOGIN' + (f" PASSWORD '{password}' IN ROLE {PASSWORD_GROUP}"
                                                    if password else ""))

    # ------------------------------------------------------------------------------------------ internals

    def _initdb(self) -> None:
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", ADMIN, "-E", "UTF8", "--locale=C.UTF-8",
                   "--auth-local=trust", "--auth-host=reject", "-N"])
        # Members of PASSWORD_GROUP log in with a password; everyone else is trusted on this private socket.
        hba = self.data / "pg_hba.conf"
        text = f"local all +{PASSWORD_GROUP} scram-sha-256\nlocal all all trust\n"
        hba.write_text(text)
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(hba, entry.pw_uid, entry.pw_gid)

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args], check=check)

    def _run(self, argv: list[str], check: bool = True) -> None:
        kwargs = {}
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check, cwd=self.root,
                       env={**_clean_env(), "HOME": str(self.root)}, **kwargs)


def running_server():
    """A pytest fixture body: a throwaway server for the session, skipped with the reason where PostgreSQL or
    PostGIS is not installed (both suites' pg_server fixtures yield from it)."""
    import pytest

    try:
        server = PgServer.start()
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


def _clean_env() -> dict:
    """The environment without the caller's libpq settings (PGHOST, PGPASSWORD...), so only the test's count."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
