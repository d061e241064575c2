"""The only module that starts and talks to the gtloc engine: a client for `gtloc serve --stdio` (docs/protocol.md).

Pure Python (subprocess + threads, no Qt), so it runs the same in QGIS's GUI, in a QgsTask's thread and in
qgis_process. The worker is started lazily in a clean environment, restarted when it has died, and killed when a
request goes quiet for too long. One shared client per QGIS session keeps one model loaded.

    PROTOCOL_VERSION        the protocol version this client speaks
    EngineError             one-line failure from the engine or the link (`code` as in the protocol, plus
                            not_configured, died, timeout, protocol)
    engine_command(path, device)  argv that starts the worker from an engine Python or a `gtloc` executable
    find_engine(configured) the configured engine, else $GTLOC_ENGINE, else `gtloc` on PATH
    clean_environment()     the environment the worker gets: the host's basics without QGIS's Python and Qt paths
    EngineClient            start/request/stop; request() blocks, reports progress and honours cancel;
                            info(), predict(), search() and shadow() are the protocol's methods, typed (the plugin
                            calls only these)
    shared_client()         the session's client, built from the plugin settings; shutdown_shared() stops it
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import queue
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

PROTOCOL_VERSION = 1
# predict's progress stages (gtloc_engine/protocol.py PREDICT_STAGES), and the client's own first one.
STAGE_STARTING = "starting engine"
STAGE_LOADING_MODEL, STAGE_CONSTANTS, STAGE_PHOTOS = "loading model", "building model constants", "photos"
PREDICT_STAGES = (STAGE_LOADING_MODEL, STAGE_CONSTANTS, STAGE_PHOTOS)
START_TIMEOUT_S = 120.0  # first start imports the engine's packages; cold disks are slow
IDLE_TIMEOUT_S = 900.0  # a large model's first batch on a CPU sends nothing for minutes
CANCEL_GRACE_S = 60.0  # after a cancel the worker finishes its batch; kill it if it does not answer by then
_POLL_S = 0.1

# Variables copied from the host; everything else (PYTHONPATH, PYTHONHOME, LD_LIBRARY_PATH, QT_*, QGIS_*, GDAL_*,
# PROJ_*) belongs to QGIS's own Python and libraries and would break the engine's environment.
_KEPT_VARIABLES = ("PATH", "HOME", "USER", "USERNAME", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TMPDIR",
                   "TEMP", "TMP", "SYSTEMROOT", "SYSTEMDRIVE", "USERPROFILE", "APPDATA", "LOCALAPPDATA",
                   "XDG_CACHE_HOME", "GTLOC_CACHE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                   "HF_HOME", "TORCH_HOME")


class EngineError(Exception):
    """A failure reported by the engine or of the link to it, as one line; `code` says which kind."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def find_engine(configured: str | None = None) -> str:
    """The engine to run: the configured path, else $GTLOC_ENGINE, else `gtloc` on PATH."""
    candidate = (configured or "").strip() or os.environ.get("GTLOC_ENGINE", "").strip() or shutil.which("gtloc")
    if not candidate:
        raise EngineError("not_configured", "no gtloc engine found: set the engine (its Python or its gtloc "
                                            "executable) in gtloc's settings, or put gtloc on PATH")
    if not Path(candidate).is_file():
        raise EngineError("not_configured", f"gtloc engine {candidate} does not exist: choose the engine's Python "
                                            "or its gtloc executable in gtloc's settings")
    return candidate


def engine_command(engine: str, device: str = "auto") -> list[str]:
    """argv for the worker: `python -m gtloc_engine.cli serve --stdio` for an interpreter, else `gtloc serve`;
    `--device` (auto, cpu, cuda; the engine's gtloc_engine/device.py) says where its models compute."""
    serve = ["serve", "--stdio", "--device", device]
    if Path(engine).name.lower().startswith("python"):
        return [engine, "-m", "gtloc_engine.cli", *serve]
    return [engine, *serve]


def clean_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: a few basics from `base` (default os.environ), unbuffered UTF-8 Python."""
    base = os.environ if base is None else base
    env = {name: base[name] for name in _KEPT_VARIABLES if name in base}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    return env


_DIED = object()


class EngineClient:
    """A link to one engine worker at a time; safe to use from several threads (requests are multiplexed by id)."""

    def __init__(self, command: list[str] | Callable[[], list[str]], *, start_timeout_s: float = START_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, cancel_grace_s: float = CANCEL_GRACE_S):
        self._command = command
        self.start_timeout_s, self.idle_timeout_s, self.cancel_grace_s = start_timeout_s, idle_timeout_s, cancel_grace_s
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._hello: dict | None = None
        self._pending: dict[int, tuple[queue.Queue, subprocess.Popen]] = {}  # request id -> (reply box, worker)
        self._ids = itertools.count(1)
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._stderr_reader: threading.Thread | None = None
        self.starts = 0  # how many workers this client has started (a restart counts)

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    def start(self, is_cancelled: Callable[[], bool] | None = None) -> dict:
        """Start the worker unless one is running; returns its hello. Raises EngineError on any failure, and
        EngineError('cancelled') when is_cancelled() turns true before the hello (the half-started worker is
        killed)."""
        with self._lock:
            if self.running and self._hello is not None:
                return self._hello
            self._discard()
            argv = self._command() if callable(self._command) else list(self._command)
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=clean_environment(), bufsize=1, text=True, encoding="utf-8",
                                        errors="replace", close_fds=True)
            except OSError as exc:
                raise EngineError("not_configured", f"cannot start the gtloc engine {argv[0]} ({exc.strerror}); "
                                                    "check the engine path in gtloc's settings") from None
            self._proc, self.starts = proc, self.starts + 1
            hello_box: queue.Queue = queue.Queue()
            threading.Thread(target=self._read_stdout, args=(proc, hello_box), daemon=True,
                             name="gtloc-engine-stdout").start()
            stderr_reader = threading.Thread(target=self._read_stderr, args=(proc,), daemon=True,
                                             name="gtloc-engine-stderr")
            stderr_reader.start()
            self._stderr_reader = stderr_reader
            deadline = time.monotonic() + self.start_timeout_s
            while True:
                if is_cancelled is not None and is_cancelled():
                    self._discard()
                    raise EngineError("cancelled", "cancelled while the gtloc engine was starting")
                try:
                    hello = hello_box.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    if time.monotonic() > deadline:
                        self._discard()
                        raise EngineError("timeout", f"the gtloc engine sent no hello within "
                                                     f"{self.start_timeout_s:.0f} s ({' '.join(argv)})"
                                                     f"{self._stderr_hint()}") from None
            if hello is _DIED:
                code = proc.wait()
                stderr_reader.join(timeout=2.0)  # the worker's last words explain the exit
                self._discard()
                raise EngineError("died", f"the gtloc engine exited at start (exit code {code}) "
                                          f"({' '.join(argv)}){self._stderr_hint()}")
            if hello.get("protocol") != PROTOCOL_VERSION:
                self._discard()
                raise EngineError("protocol", f"the gtloc engine speaks protocol {hello.get('protocol')!r} and this "
                                              f"plugin speaks {PROTOCOL_VERSION}: install matching versions")
            self._hello = hello
            return hello

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to shut down; kill it if it does not exit in time."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                try:
                    self._send({"id": 0, "method": "shutdown"}, proc)
                    proc.stdin.close()
                    proc.wait(timeout=timeout_s)
                except (OSError, ValueError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()
            self._discard()

    def stderr_tail(self, n_lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-n_lines:])

    # -- requests -----------------------------------------------------------------------------------------------
    def request(self, method: str, params: dict | None = None, *,
                on_progress: Callable[[int, int], None] | None = None,
                on_stage: Callable[[str, int, int, float | None], None] | None = None,
                is_cancelled: Callable[[], bool] | None = None, idle_timeout_s: float | None = None) -> dict:
        """Send one request and wait for its result (returned) or error (raised as EngineError).

        on_progress(done, total) is called from this thread for the photos stage (and for progress lines without a
        stage, from older engines); on_stage(stage, done, total, eta_s) for every progress line (PREDICT_STAGES; the
        typed methods first report STAGE_STARTING when they have to start a worker). is_cancelled() is polled and,
        once true, a cancel is sent. A worker that dies is reported as EngineError('died') and replaced on the next
        request.
        """
        idle_timeout_s = self.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
        with self._lock:
            self.start()
            request_id = next(self._ids)
            box: queue.Queue = queue.Queue()
            self._pending[request_id] = (box, self._proc)
            proc = self._proc
            self._send({"id": request_id, "method": method, "params": params or {}}, proc)
        try:
            deadline = time.monotonic() + idle_timeout_s
            cancel_sent = False
            while True:
                try:
                    message = box.get(timeout=_POLL_S)
                except queue.Empty:
                    if not cancel_sent and is_cancelled is not None and is_cancelled():
                        cancel_sent = True
                        self._send({"id": next(self._ids), "method": "cancel", "params": {"target": request_id}},
                                   proc)
                        deadline = min(deadline, time.monotonic() + self.cancel_grace_s)
                    if time.monotonic() > deadline:
                        self._kill(proc)
                        waited = (f"stop within {self.cancel_grace_s:.0f} s of a cancel" if cancel_sent
                                  else f"answer {method} for {idle_timeout_s:.0f} s")
                        raise EngineError("timeout", f"the gtloc engine did not {waited} and was stopped; it "
                                                     "restarts on the next request") from None
                    continue
                if message is _DIED:
                    code = proc.wait()
                    self._stderr_reader.join(timeout=2.0)
                    raise EngineError("died", f"the gtloc engine stopped (exit code {code}) during {method}; it "
                                              f"restarts on the next request{self._stderr_hint()}")
                kind = message.get("type")
                if kind == "progress":
                    if not cancel_sent:  # after a cancel only the grace period counts
                        deadline = time.monotonic() + idle_timeout_s
                    stage = message.get("stage") or STAGE_PHOTOS
                    done, total = int(message.get("done", 0)), int(message.get("total", 0))
                    if on_stage is not None:
                        eta_s = message.get("eta_s")
                        on_stage(str(stage), done, total, float(eta_s) if isinstance(eta_s, (int, float)) else None)
                    if on_progress is not None and stage == STAGE_PHOTOS:
                        on_progress(done, total)
                elif kind == "result":
                    return message.get("result") or {}
                elif kind == "error":
                    error = message.get("error") or {}
                    raise EngineError(error.get("code", "internal"), error.get("message", "unknown engine error"))
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    # -- the protocol's methods (docs/protocol.md; the names are the engine's, gtloc_engine/protocol.py) ---------
    def info(self, model: str | None = None, *, idle_timeout_s: float | None = None) -> dict:
        """The protocol's `info`: engine version, protocol, methods, parameters, photo suffixes, the worker's Python;
        with `model`, that checkpoint's path, sha256 and header (config, heads_trained, versions)."""
        return self._call("info", _params(model=_text(model)), idle_timeout_s=idle_timeout_s)

    def predict(self, model: str, photos: list[str], out_gpkg: str, *, rasters_dir: str | None = None,
                top_k: int = 5, batch_size: int | None = None, cache_dir: str | None = None, time: str | None = None,
                res_deg: float | None = None, time_gallery: str | None = None, tencrop: bool | None = None,
                on_progress: Callable[[int, int], None] | None = None,
                on_stage: Callable[[str, int, int, float | None], None] | None = None,
                is_cancelled: Callable[[], bool] | None = None) -> dict:
        """The protocol's `predict`: photo files and/or folders -> a results GeoPackage; returns the engine's
        summary. `time`: a known local capture time (ISO 8601 or EXIF form): every photo's place is predicted given
        it (where given when); None: from the image alone. None elsewhere: the engine's default."""
        params = _params(model=str(model), photos=[str(p) for p in photos], out_gpkg=str(out_gpkg),
                         rasters_dir=_text(rasters_dir), top_k=int(top_k), batch_size=_int(batch_size),
                         cache_dir=_text(cache_dir), time=_text(time), res_deg=_float(res_deg),
                         time_gallery=_text(time_gallery), tencrop=tencrop)
        summary = self._call("predict", params, on_progress=on_progress, on_stage=on_stage, is_cancelled=is_cancelled)
        if "time" in params and not _has_column(summary.get("out_gpkg", out_gpkg), "photos", "given_time_local"):
            # An engine from before `time` ignores the parameter: its places are from the image alone.
            hello = self._hello or {}
            raise EngineError("protocol", f"this gtloc engine ({hello.get('engine_version', '?')}) ignored the known "
                                          "capture time (its results have no given_time_local): update the engine, "
                                          "or clear the time to locate from the image alone")
        return summary

    def search(self, gpkg: str, model: str, *, near_latlon_deg: tuple[float, float] | None = None,
               radius_km: float | None = None, month: str | None = None, hour: str | None = None,
               like: str | None = None, text: str | None = None, within: str | None = None,
               within_layer: str | None = None, claimed_after: str | None = None, claimed_before: str | None = None,
               pooling: str | None = None, point_source: str | None = None, top_k: int = 10, out: str | None = None,
               is_cancelled: Callable[[], bool] | None = None) -> dict:
        """The protocol's `search`: photos of a results GeoPackage matching a place and/or month/hour windows
        ('11-2', '22-3'), a photo or a text, filtered by a radius around the place, a polygon file (and its layer),
        a claimed local time range; returns the engine's result dict. None: not given (the engine's default)."""
        near = None if near_latlon_deg is None else [float(near_latlon_deg[0]), float(near_latlon_deg[1])]
        params = _params(gpkg=str(gpkg), model=str(model), near=near, radius_km=_float(radius_km), month=_text(month),
                         hour=_text(hour), like=_text(like), text=_text(text), within=_text(within),
                         within_layer=_text(within_layer), claimed_after=_text(claimed_after),
                         claimed_before=_text(claimed_before), pooling=_text(pooling),
                         point_source=_text(point_source), top_k=int(top_k), out=_text(out))
        return self._call("search", params, is_cancelled=is_cancelled)

    def shadow(self, measurements: list[dict], out_dir: str, *, photo: str | None = None, model: str | None = None,
               posterior: str | None = None, res_deg: float | None = None, top_k: int | None = None,
               cache_dir: str | None = None, on_progress: Callable[[int, int], None] | None = None,
               is_cancelled: Callable[[], bool] | None = None) -> dict:
        """The protocol's `shadow`: measurements (dicts of the engine's measurement fields: time, height_m and
        length_m or elev_deg, bearing_deg, their sigmas) -> the shadow locus in out_dir (shadow_locus.tif, and
        shadow.gpkg with layers shadow_regions, shadow_candidates), fused with a photo's place posterior (photo +
        model, or posterior: its global likelihood GeoTIFF) into shadow_fused.tif; returns the engine's summary.
        on_progress(done, total) counts the locus's time bins."""
        items = [{name: value for name, value in dict(m).items() if value is not None} for m in measurements]
        params = _params(measurements=items, out_dir=str(out_dir), photo=_text(photo), model=_text(model),
                         posterior=_text(posterior), res_deg=_float(res_deg), top_k=_int(top_k),
                         cache_dir=_text(cache_dir))
        return self._call("shadow", params, is_cancelled=is_cancelled,
                          on_stage=None if on_progress is None else
                          lambda stage, done, total, eta_s: on_progress(done, total))

    def _call(self, method: str, params: dict, **request_options) -> dict:
        """request() after checking that this engine answers `method` and takes every parameter sent (an engine
        that ignored one would answer another question); engines from before the hello listed parameters are
        trusted with their methods."""
        on_stage = request_options.get("on_stage")
        if on_stage is not None and not (self.running and self._hello is not None):
            on_stage(STAGE_STARTING, 0, 0, None)
        hello = self.start(request_options.get("is_cancelled"))
        if method not in hello.get("methods", []):
            raise EngineError("unknown_method", f"this gtloc engine ({hello.get('engine_version')}) cannot {method}: "
                                                "update the engine")
        known = (hello.get("params") or {}).get(method)
        unknown = sorted(set(params) - set(known)) if known is not None else []
        if unknown:
            raise EngineError("protocol", f"this gtloc engine ({hello.get('engine_version')}) does not take "
                                          f"{', '.join(unknown)} for {method}: update the engine")
        return self.request(method, params, **request_options)

    # -- internals ----------------------------------------------------------------------------------------------
    def _send(self, message: dict, proc: subprocess.Popen) -> None:
        with self._write_lock:  # requests from several threads must not interleave within a line
            try:
                proc.stdin.write(json.dumps(message) + "\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass  # a dead worker: the stdout reader reports it to the waiting requests

    def _read_stdout(self, proc: subprocess.Popen, hello_box: queue.Queue) -> None:
        try:
            for line in proc.stdout:
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    self._stderr.append(f"[not a protocol line on stdout] {line.rstrip()}")
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "hello":
                    hello_box.put(message)
                    continue
                with self._lock:
                    entry = self._pending.get(message.get("id"))
                if entry is not None and entry[1] is proc:
                    entry[0].put(message)
        except (OSError, ValueError):
            pass  # the stream was closed under us: the worker is being discarded
        hello_box.put(_DIED)
        with self._lock:
            for box, owner in self._pending.values():
                if owner is proc:
                    box.put(_DIED)

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        try:
            for line in proc.stderr:
                self._stderr.append(line.rstrip("\n"))
        except (OSError, ValueError):
            pass

    def _stderr_hint(self) -> str:
        lines = [line for line in self._stderr if line.strip()]
        return f": {lines[-1].strip()}" if lines else ""

    def _kill(self, proc: subprocess.Popen | None = None) -> None:
        proc = proc or self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _discard(self) -> None:
        """Forget the current worker (killing it if alive) so the next start() begins afresh."""
        if self._proc is not None:
            self._kill(self._proc)
            for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass
        self._proc, self._hello = None, None


def _params(**values) -> dict:
    """The parameters given: None means not given (the engine's default; _text maps empty text to None)."""
    return {name: value for name, value in values.items() if value is not None}


def _text(value) -> str | None:
    return None if value in (None, "") else str(value)


def _int(value) -> int | None:
    return None if value is None else int(value)


def _float(value) -> float | None:
    return None if value is None else float(value)


def _has_column(gpkg: str, table: str, column: str) -> bool:
    """Whether a GeoPackage's table has the column; True when it cannot be told (no file, no such table)."""
    if not Path(gpkg).is_file():
        return True
    try:
        db = sqlite3.connect(Path(gpkg).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
        finally:
            db.close()
    except sqlite3.Error:
        return True
    return not columns or column in columns


_shared: EngineClient | None = None
_shared_lock = threading.Lock()


def shared_client() -> EngineClient:
    """The session's client; the engine path is read from the plugin settings each time a worker starts."""
    global _shared
    with _shared_lock:
        if _shared is None:
            from .settings import load_settings

            def argv() -> list[str]:
                settings = load_settings()
                return engine_command(find_engine(settings.engine), settings.device)

            _shared = EngineClient(argv)
            atexit.register(shutdown_shared)
        return _shared


def shutdown_shared() -> None:
    """Stop the session's worker (plugin unload, settings change, QGIS exit)."""
    if _shared is not None:
        _shared.stop()
