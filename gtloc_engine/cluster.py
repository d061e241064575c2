"""Distributed batch prediction on a Dask cluster: an archive's photos predicted by many worker processes, on one
machine or many, into one PostGIS case (docs/team-server.md, "A cluster job").

Why Dask (distributed) rather than Ray: both are well kept and both retry the work of a lost worker. Dask is pure
Python (dask + distributed + their dependencies install in ~35 MB and add nothing compiled to the engine's
environment), its local cluster starts in about a second, and its scheduler already reschedules the tasks of a
worker that dies. Ray 2.60's wheel alone is 79 MB (202 MB unpacked) and Ray Data adds pyarrow; what Ray Data's
map_batches with model actors would give (streaming, one model per slot) is here a task per chunk of photos and one
model kept per worker process. For GPUs, start one Dask worker per GPU (`dask worker ... --nthreads 1` with
CUDA_VISIBLE_DEVICES set): `device` ('auto') puts each worker's model on its GPU (gtloc_engine/device.py).

How a run goes:
    driver   lists the photos (it never opens one), splits them in input order into chunks of `chunk_photos`
             paths, and submits one task per chunk. It adds up progress and the chunks' summaries.
    worker   keeps one PhotoPipeline per (checkpoint version, settings) in its process: the model loads once per
             worker and stays for every later chunk (the counterpart of Ray's model actors). It runs the same
             pipeline as `gtloc predict` on the chunk, into the case: only that worker reads those photos (hash,
             decode, EXIF), every batch is committed as it finishes, and resume and duplicate rules are the
             pipeline's own.
    loss     a worker process that dies (killed, out of memory, its machine gone) loses its running chunks; the
             scheduler gives them to another worker (up to distributed.scheduler.allowed-failures, 3, per chunk).
             The retried chunk resumes: photos whose batches were committed are skipped, the rest computed, and a
             photo written twice is harmless (the store replaces a path's rows under a lock). A chunk that kills
             every worker it is given is recorded as failures of its unfinished photos; the run goes on.
    progress each worker reports (chunk, photos done) after every committed batch (Worker.log_event); the driver
             keeps each chunk's highest count (a retried chunk counts up again) and reports the sum.
    cancel   sets a cluster-wide Event: running chunks stop after their current batch, chunks not begun end at
             once; everything committed stays.

A summary's n_skipped also counts the photos a retried chunk found committed by its first, killed, attempt.

Public surface:
    predict_on_cluster(params, cluster, ...)  -> PredictSummary   the documented Python entry point
    open_cluster(cluster)                      -> (Client, close)  'local:N' or a scheduler address
    CHUNK_PHOTOS
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path

from gtloc_engine.errors import GtlocError
from gtloc_engine.inference.pipeline import PredictSummary
from gtloc_engine.io.photos import iter_photo_paths
from gtloc_engine.io.store import check_store_target, is_database_target, open_store

log = logging.getLogger(__name__)

CHUNK_PHOTOS = 64  # photos per task: a few batches, so a lost worker costs little and progress comes often
_EXCEPTION_RETRIES = 1  # a chunk that raises (e.g. the connection to the case dropped) is tried once more
_PIPELINES_KEPT = 2  # per worker process


def predict_on_cluster(params, cluster, *, chunk_photos: int = CHUNK_PHOTOS,
                       progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
                       precision: str = "fp32", device: str = "auto") -> PredictSummary:
    """Predict `params` (a protocol.PredictParams, or the dict of predict's parameters: model, photos, out_gpkg,
    top_k, batch_size, res_deg, time, rasters_dir, ...) on a Dask cluster into the PostGIS case `out_gpkg`.

    `cluster`: 'local:N' (N worker processes on this machine, listening on 127.0.0.1 only), a scheduler address
    (tcp://HOST:8786, tls://...), or a distributed.Client. `progress(done, total)` is called on this thread's
    caller side as batches are committed anywhere; `cancel` stops the run after the running batches. `precision` and
    `device` ('auto': each worker's first visible GPU, else its CPU; gtloc_engine/device.py) apply on every worker."""
    from gtloc_engine.protocol import PredictParams

    request = params if isinstance(params, PredictParams) else PredictParams.from_params(dict(params))
    if not is_database_target(request.out_gpkg):
        raise GtlocError(f"a cluster run writes into a PostGIS case (postgresql://HOST/CASE or service=NAME), not "
                         f"'{request.out_gpkg}': every worker writes at once")
    if chunk_photos < 1:
        raise GtlocError(f"chunk_photos must be at least 1, got {chunk_photos}")
    _local_workers(cluster)  # a malformed local:N is refused before any work
    rasters = Path(request.rasters_dir) if request.rasters_dir is not None else None
    paths = [str(Path(p).absolute()) for p in iter_photo_paths(request.photos)
             if rasters is None or not Path(os.path.realpath(p)).is_relative_to(os.path.realpath(rasters))]
    if not paths:
        raise GtlocError(f"no photos found in {' '.join(map(str, request.photos))}; pass photo files or folders")
    check_store_target(request.out_gpkg)  # the tables exist before the workers start; a bad target costs nothing
    chunks = [paths[i:i + chunk_photos] for i in range(0, len(paths), chunk_photos)]
    with _quiet_dask_logs():
        client, close = open_cluster(cluster)
        try:
            return _run(client, request, chunks, len(paths), progress, cancel, (precision, device))
        finally:
            close()


def open_cluster(cluster):
    """(client, close): a distributed.Client for 'local:N', a scheduler address or a given Client (which `close`
    leaves open). A local cluster's scheduler, workers and the scheduler's HTTP endpoint (health, no dashboard)
    listen on 127.0.0.1 only, on ports the system picks."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise GtlocError("--cluster needs Dask: pip install 'gtloc-engine[cluster]'") from None
    if isinstance(cluster, Client):
        return cluster, lambda: None
    text = str(cluster)
    n_workers = _local_workers(text)
    if n_workers is not None:
        threads = max(1, (os.cpu_count() or 1) // n_workers)  # torch threads per worker: the cores shared out
        local = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                             dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                             silence_logs=logging.ERROR,
                             env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        client = Client(local)

        def close() -> None:
            client.close()
            local.close()

        return client, close
    try:
        client = Client(text, timeout=30)
    except (OSError, TimeoutError, ValueError) as exc:
        raise GtlocError(f"cannot reach the Dask scheduler '{text}' ({exc}); start it with `dask scheduler` and its "
                         "workers with `dask worker ADDRESS`, or use --cluster local:N") from None
    return client, client.close


@contextmanager
def _quiet_dask_logs():
    """Dask's loggers at WARNING while a run lasts: its INFO lines (connections, starts, stops) are no news to an
    analyst, a lost worker is a warning."""
    try:
        import distributed  # noqa: F401  (registers its loggers)
    except ImportError:
        yield
        return
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "distributed" or name.startswith("distributed.")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.level))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _local_workers(cluster) -> int | None:
    """N of 'local:N' ('local': one per core), None for anything else; GtlocError for a malformed local:N."""
    text = str(cluster)
    if not (text == "local" or text.startswith("local:")):
        return None
    count = text.partition(":")[2] or str(os.cpu_count() or 1)
    if not count.isdigit() or int(count) < 1:
        raise GtlocError(f"cluster '{text}' must be local:N with N worker processes, e.g. local:2")
    return int(count)


# ---------------------------------------------------------------------------------------------- driver


def _run(client, request, chunks: list[list[str]], n_photos: int, progress, cancel, runtime: tuple[str, str]
         ) -> PredictSummary:
    from distributed import Event, KilledWorker, as_completed

    run_id = uuid.uuid4().hex
    topic = f"gtloc-progress-{run_id}"
    stop = Event(f"gtloc-cancel-{run_id}", client=client)
    done_per_chunk = [0] * len(chunks)
    lock = threading.Lock()

    def on_progress(event) -> None:
        _, message = event
        with lock:
            chunk, done = int(message["chunk"]), int(message["done"])
            done_per_chunk[chunk] = max(done_per_chunk[chunk], min(done, len(chunks[chunk])))
            total_done = sum(done_per_chunk)
        if progress is not None:
            progress(total_done, n_photos)

    client.subscribe_topic(topic, on_progress)
    summary = PredictSummary(out_gpkg=request.out_gpkg, n_photos=n_photos)
    errors: list[str] = []
    futures = {client.submit(_predict_chunk, request, i, chunk, run_id, runtime, key=f"gtloc-chunk-{run_id}-{i}",
                             retries=_EXCEPTION_RETRIES, pure=False): i for i, chunk in enumerate(chunks)}
    watcher = _CancelWatcher(cancel, stop)
    try:
        for future in as_completed(list(futures)):
            i = futures[future]
            try:
                result = future.result()
            except KilledWorker:
                _record_lost_chunk(request.out_gpkg, chunks[i], summary)
                continue
            except GtlocError as exc:
                errors.append(str(exc))
                continue
            summary.n_done += result["n_done"]
            summary.n_skipped += result["n_skipped"]
            summary.n_failed += result["n_failed"]
            summary.failures += [(f["path"], f["reason"]) for f in result["failures"]]
            summary.rasters += result["rasters"]
            summary.cancelled |= result["cancelled"]
            with lock:
                done_per_chunk[i] = len(chunks[i])
    finally:
        watcher.close()
        with suppress(Exception):
            client.unsubscribe_topic(topic)
    if watcher.fired:
        summary.cancelled = True
    if progress is not None:
        progress(sum(done_per_chunk), n_photos)
    if errors:
        raise GtlocError(f"{len(errors)} of {len(chunks)} chunks could not be written ({errors[0]}); the others "
                         "are in the case, run again to finish")
    return summary


def _record_lost_chunk(target: str, paths: list[str], summary: PredictSummary) -> None:
    """A chunk whose every try killed its worker: its photos without results become failures."""
    with open_store(target) as store:
        finished = {key[0] for key in store.keys()}
        for path in paths:
            if path in finished:
                continue
            reason = (f"the worker processing '{path}' (in a chunk of {len(paths)} photos) died on every try; one of "
                      "those photos may crash the decoder or exhaust memory: run gtloc predict on it alone to see")
            store.set_failure(path, reason)
            summary.failures.append((path, reason))
            summary.n_failed += 1
    log.error("a chunk of %d photos killed its workers; its unfinished photos are recorded as failures", len(paths))


class _CancelWatcher:
    """Sets the cluster-wide Event when the caller's cancel is set (a Ctrl-C on the driver)."""

    def __init__(self, cancel: threading.Event | None, stop):
        self.fired = False
        self._cancel, self._stop, self._closed = cancel, stop, threading.Event()
        self._thread = None
        if cancel is not None:
            self._thread = threading.Thread(target=self._watch, name="gtloc-cancel-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._closed.wait(0.2):
            if self._cancel.is_set():
                self.fired = True
                log.info("cancelled: the running chunks stop after their current batch")
                self._stop.set()
                return

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------- worker

_pipelines: dict[tuple, object] = {}  # in each worker process: the loaded pipelines, most recent last
_pipelines_lock = threading.Lock()


def _predict_chunk(request, chunk: int, paths: list[str], run_id: str, runtime: tuple[str, str]) -> dict:
    """One chunk on a worker: the pipeline run on its paths into the case; its PredictSummary as JSON."""
    from distributed import Event, get_worker

    worker = get_worker()
    stop = _EventFlag(Event(f"gtloc-cancel-{run_id}"))
    if stop.is_set():
        return {**PredictSummary(out_gpkg=request.out_gpkg, n_photos=len(paths)).to_json(), "cancelled": True}
    pipeline = _worker_pipeline(request, *runtime)

    def progress(done: int, total: int) -> None:
        worker.log_event(f"gtloc-progress-{run_id}", {"chunk": chunk, "done": done})

    summary = pipeline.run(paths, request.out_gpkg, rasters_dir=request.rasters_dir, batch_size=request.batch_size,
                           progress=progress, cancel=stop, given_time=request.time)
    return summary.to_json()


def _worker_pipeline(request, precision: str, device: str):
    """This process's PhotoPipeline for the request's checkpoint and settings, loaded on first use."""
    model = Path(request.model).resolve()
    stat = model.stat()
    key = (str(model), stat.st_mtime_ns, stat.st_size, request.top_k, request.res_deg, request.time_gallery,
           request.tencrop, request.cache_dir, precision, device)
    with _pipelines_lock:
        if key not in _pipelines:
            _pipelines[key] = request.pipeline(precision=precision, device=device)
            while len(_pipelines) > _PIPELINES_KEPT:
                _pipelines.pop(next(iter(_pipelines)))
        return _pipelines[key]


class _EventFlag:
    """A distributed.Event read as the pipeline's cancel flag (is_set between batches)."""

    def __init__(self, event):
        self._event = event

    def is_set(self) -> bool:
        try:
            return bool(self._event.is_set())
        except Exception:  # noqa: BLE001 - a scheduler hiccup must not fail a chunk: go on
            return False
