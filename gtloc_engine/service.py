"""The engine worker behind `gtloc serve --stdio`: a versioned JSON-lines protocol for the QGIS plugin.

One JSON object per line each way (docs/protocol.md is the reference). The worker writes a `hello` line first,
then answers requests `{"id", "method", "params"}` with `progress`, `result` or `error` lines carrying the same id.
Requests are read on their own thread so that `cancel` and `shutdown` arrive while a prediction runs; jobs run one
at a time in arrival order. Parameters are parsed by gtloc_engine/protocol.py, the table the CLI and the plugin's
client share; hello lists each method's parameter names. Any failure becomes an `error` line and the worker stays
alive. Only protocol lines go to stdout: everything else (prints, logging, C libraries writing to fd 1) is sent to
stderr. Paths in, paths out: no pixels cross the pipe. The worker opens no network port.

    PROTOCOL_VERSION      the protocol's version, sent in the hello line; bumped on any incompatible change
    METHODS               the methods this worker answers
    Worker                the dispatcher, over any pair of text streams (tests drive it in-process or as a subprocess)
    serve_stdio()         run a Worker on this process's stdin/stdout with stdout reserved for the protocol
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from gtloc_engine import __version__
from gtloc_engine.errors import GtlocError
from gtloc_engine.protocol import (
    PARAMS,
    STAGE_CONSTANTS,
    STAGE_LOADING_MODEL,
    STAGE_PHOTOS,
    InfoParams,
    ParamError,
    PredictParams,
    SearchParams,
    ShadowParams,
)

log = logging.getLogger("gtloc.service")

PROTOCOL_VERSION = 1
METHODS = ("info", "predict", "search", "shadow", "cancel", "shutdown")
STAGE_SHADOW = "shadow locus"  # shadow's progress lines: time bins of the measurements done / in all
_PIPELINES_KEPT = 2  # a model per pipeline stays in memory: keep the last two models used


class RequestError(Exception):
    """A request the worker refuses; `code` goes into the error line (bad_request, unknown_method, cancelled)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Worker:
    """Reads requests from `inp`, writes protocol lines to `out`; `run()` returns after shutdown or end of input."""

    def __init__(self, inp: TextIO, out: TextIO):
        self._inp, self._out = inp, out
        self._write_lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._cancel_events: dict[Any, threading.Event] = {}  # request id -> event, for queued and running jobs
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()
        self._pipelines: OrderedDict[tuple, Any] = OrderedDict()
        self._searchers: OrderedDict[tuple, Any] = OrderedDict()
        self._predictors: OrderedDict[tuple, Any] = OrderedDict()  # shadow's photo posteriors

    # -- output -------------------------------------------------------------------------------------------------
    def send(self, message: dict) -> None:
        line = json.dumps(message, ensure_ascii=True, default=str)
        with self._write_lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError):  # the client closed its end: nobody reads results any more
                self._stop()

    def _error(self, request_id, code: str, message: str) -> None:
        self.send({"id": request_id, "type": "error", "error": {"code": code, "message": message}})

    # -- main loops ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Say hello, then run jobs on this thread while a reader thread takes requests; 0 when stopped."""
        self.send({"type": "hello", "protocol": PROTOCOL_VERSION, "engine_version": __version__,
                   "methods": list(METHODS), "params": _method_params(), "pid": os.getpid()})
        reader = threading.Thread(target=self._read_loop, name="gtloc-request-reader", daemon=True)
        reader.start()
        while True:
            job = self._jobs.get()
            if job is None:
                break
            self._run_job(*job)
        return 0

    def _read_loop(self) -> None:
        try:
            for line in self._inp:
                if line.strip():
                    self._take(line)
                if self._stopping.is_set():
                    break
        finally:
            # End of input means the client is gone: stop what runs and leave.
            self._stop()

    def _stop(self) -> None:
        with self._state_lock:
            self._stopping.set()
            for event in self._cancel_events.values():
                event.set()
        self._jobs.put(None)

    def _take(self, line: str) -> None:
        """Parse one request line; cancel and shutdown act at once, other methods queue as jobs."""
        request_id = None
        try:
            try:
                request = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RequestError("bad_request", f"request is not valid JSON ({exc.msg} at column {exc.colno})")
            if not isinstance(request, dict):
                raise RequestError("bad_request", "request must be a JSON object with id, method and params")
            request_id = request.get("id")
            if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
                request_id = None
                raise RequestError("bad_request", "request needs an 'id' that is a string or an integer")
            method, params = request.get("method"), request.get("params", {})
            if not isinstance(params, dict):
                raise RequestError("bad_request", f"'params' of request {request_id!r} must be a JSON object")
            if method not in METHODS:
                raise RequestError("unknown_method", f"unknown method {method!r}; this worker answers "
                                                     f"{', '.join(METHODS)} (protocol {PROTOCOL_VERSION})")
            if method == "cancel":
                self.send({"id": request_id, "type": "result", "result": self._cancel(params)})
                return
            if method == "shutdown":
                self.send({"id": request_id, "type": "result", "result": {"stopping": True}})
                self._stop()
                return
            with self._state_lock:
                if request_id in self._cancel_events:
                    raise RequestError("bad_request", f"request id {request_id!r} is already in use")
                self._cancel_events[request_id] = threading.Event()
            self._jobs.put((request_id, method, params))
        except RequestError as exc:
            self._error(request_id, exc.code, str(exc))

    def _cancel(self, params: dict) -> dict:
        target = params.get("target")
        with self._state_lock:
            event = self._cancel_events.get(target)
        if event is not None:
            event.set()
        return {"target": target, "cancelled": event is not None}

    def _run_job(self, request_id, method: str, params: dict) -> None:
        with self._state_lock:
            cancel = self._cancel_events[request_id]
        try:
            if cancel.is_set():
                raise RequestError("cancelled", f"request {request_id!r} was cancelled before it started")
            handler: Callable[[Any, dict, threading.Event], dict] = getattr(self, f"_do_{method}")
            result = handler(request_id, params, cancel)
            self.send({"id": request_id, "type": "result", "result": result})
        except (RequestError, ParamError) as exc:
            self._error(request_id, exc.code, str(exc))
        except GtlocError as exc:
            self._error(request_id, "bad_input", str(exc))
        except Exception as exc:  # noqa: BLE001  (the worker outlives any bug in one request; the traceback goes to stderr)
            traceback.print_exc(file=sys.stderr)
            self._error(request_id, "internal", f"{type(exc).__name__}: {exc}".splitlines()[0])
        finally:
            with self._state_lock:
                self._cancel_events.pop(request_id, None)

    # -- methods: each parses its params with gtloc_engine.protocol ---------------------------------------------
    def _do_info(self, request_id, params: dict, cancel: threading.Event) -> dict:
        from gtloc_engine.io.photos import PHOTO_SUFFIXES

        request = InfoParams.from_params(params)
        from gtloc_engine.device import default_device

        info = {"engine_version": __version__, "protocol": PROTOCOL_VERSION, "methods": list(METHODS),
                "params": _method_params(), "photo_suffixes": sorted(PHOTO_SUFFIXES), "python": sys.executable,
                "device": str(default_device())}
        if request.model is not None:
            from gtloc_engine.io.photos import file_sha256
            from gtloc_engine.model.checkpoint import read_header

            header = read_header(request.model)  # first: a missing or foreign file is named as a checkpoint
            info["model"] = {"path": str(request.model), "sha256": file_sha256(request.model), "header": header}
        return info

    def _do_predict(self, request_id, params: dict, cancel: threading.Event) -> dict:
        from gtloc_engine.inference import constants

        request = PredictParams.from_params(params)

        def send_progress(stage: str, done: int, total: int, eta_s: float | None = None) -> None:
            line = {"id": request_id, "type": "progress", "stage": stage, "done": int(done), "total": int(total)}
            if eta_s is not None:
                line["eta_s"] = round(float(eta_s), 1)
            self.send(line)

        def constants_progress(step: constants.ConstantsProgress) -> None:
            send_progress(STAGE_CONSTANTS, step.done, step.total, step.eta_s)
            if cancel.is_set():  # a first build can take minutes: stop between chunks, nothing half-written stays
                raise RequestError("cancelled", f"request {request_id!r} was cancelled while building the model's "
                                                "constants; they are built again on the next request")

        send_progress(STAGE_LOADING_MODEL, 0, 0)
        with constants.reporting(constants_progress):
            pipeline = self._pipeline(request)
            pipeline.warm_up()
        if cancel.is_set():  # cancelled while the model loaded: no photo is started
            raise RequestError("cancelled", f"request {request_id!r} was cancelled while the model loaded")
        summary = pipeline.run(list(request.photos), request.out_gpkg, rasters_dir=request.rasters_dir,
                               batch_size=request.batch_size, cancel=cancel, given_time=request.time,
                               progress=lambda done, total: send_progress(STAGE_PHOTOS, done, total))
        return summary.to_json()

    def _do_search(self, request_id, params: dict, cancel: threading.Event) -> dict:
        from gtloc_engine.inference.search import write_search_output

        request = SearchParams.from_params(params)
        output = self._searcher(request).search(request.query)
        if request.out is not None:
            write_search_output(request.out, output)
        return {**output, "out": None if request.out is None else str(request.out)}

    def _do_shadow(self, request_id, params: dict, cancel: threading.Event) -> dict:
        from gtloc_engine.inference.shadow import ShadowCancelled

        request = ShadowParams.from_params(params)

        def progress(done: int, total: int) -> None:
            self.send({"id": request_id, "type": "progress", "stage": STAGE_SHADOW, "done": int(done),
                       "total": int(total)})

        try:
            return request.run(progress=progress, cancel=cancel,
                               predictor=None if request.photo is None else self._predictor(request))
        except ShadowCancelled:
            raise RequestError("cancelled", f"request {request_id!r} was cancelled; nothing was written") from None

    def _predictor(self, request):
        """One Predictor per (checkpoint version, grid, cache) for shadow's photo posteriors; a model a pipeline
        already loaded (one centre crop) is reused."""
        from gtloc_engine.inference.predictor import Predictor

        model_version = _file_version(request.model, "model", "choose a gtloc .safetensors checkpoint")
        key = (model_version, request.res_deg, request.cache_dir)
        if key not in self._predictors:
            model = next((p.model for k, p in reversed(self._pipelines.items())
                          if k[0] == model_version and not k[-1]), None)
            if model is None:
                from gtloc_engine.model.checkpoint import load_checkpoint

                model = load_checkpoint(request.model)
            self._predictors[key] = Predictor(model, global_res_deg=request.res_deg, cache_dir=request.cache_dir)
            while len(self._predictors) > _PIPELINES_KEPT:
                self._predictors.popitem(last=False)
        self._predictors.move_to_end(key)
        return self._predictors[key]

    def _searcher(self, request):
        """One CollectionSearch per (GeoPackage version, checkpoint version, settings); a model already loaded by
        another search or by a pipeline that embeds photos as a search does (one centre crop) is reused."""
        from gtloc_engine.inference.search import CollectionSearch

        model_version = _file_version(request.model, "model", "choose a gtloc .safetensors checkpoint")
        key = (_collection_version(request.gpkg), model_version, request.config)
        if key not in self._searchers:
            loaded = next((s.model for k, s in reversed(self._searchers.items()) if k[1] == model_version), None)
            if loaded is None:
                loaded = next((p.model for k, p in reversed(self._pipelines.items())
                               if k[0] == model_version and not k[-1]), None)
            self._searchers[key] = CollectionSearch(request.gpkg, request.model, config=request.config, model=loaded)
            while len(self._searchers) > _PIPELINES_KEPT:
                self._searchers.popitem(last=False)
        self._searchers.move_to_end(key)
        return self._searchers[key]

    def _pipeline(self, request):
        """One PhotoPipeline per (checkpoint file version, settings that shape the pipeline): the model loads once
        per session. The key ends with tencrop, which _searcher reads."""
        model_version = _file_version(request.model, "model", "choose a gtloc .safetensors checkpoint")
        time_gallery = None if request.time_gallery is None else _file_version(
            request.time_gallery, "time gallery", "choose a .npy file of (N, 5) local times")
        key = (model_version, request.top_k, request.cache_dir, request.res_deg, time_gallery, request.tencrop)
        if key not in self._pipelines:
            self._pipelines[key] = request.pipeline()
            while len(self._pipelines) > _PIPELINES_KEPT:
                self._pipelines.popitem(last=False)
        self._pipelines.move_to_end(key)
        return self._pipelines[key]


def _method_params() -> dict[str, list[str]]:
    """Each method's parameter names (hello and info list them, so a client can tell what this engine takes)."""
    return {method: [row.name for row in rows] for method, rows in PARAMS.items()}


def _collection_version(target) -> tuple:
    """A results GeoPackage's file version, or what changes when a PostGIS case's photos or embeddings change."""
    from gtloc_engine.io.store import is_database_target

    if is_database_target(target):
        from gtloc_engine.io.postgis import collection_version

        return collection_version(target)
    return _file_version(target, "results GeoPackage", "choose a GeoPackage written by gtloc predict")


def _file_version(path: Path, what: str, hint: str) -> tuple:
    """(resolved path, mtime_ns, size): a changed file is a new version, so cached work on it is dropped."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError:
        raise GtlocError(f"{what} {path} not found; {hint}") from None
    return str(path), stat.st_mtime_ns, stat.st_size


def serve_stdio() -> int:
    """Serve on stdin/stdout. File descriptor 1 is moved aside for the protocol and pointed at stderr."""
    protocol_fd = os.dup(1)
    os.dup2(2, 1)  # C extensions and stray prints that write to fd 1 now land on stderr
    sys.stdout = sys.stderr
    with os.fdopen(protocol_fd, "w", encoding="utf-8", newline="\n") as out, \
            open(sys.stdin.fileno(), encoding="utf-8", newline="\n", closefd=False) as inp:
        return Worker(inp, out).run()
