"""gunicorn hooks for `risk serve` (``-c python:risk_service.gunicorn_conf``): metric files.

With several worker processes, prometheus_client writes each process's values to files in
``PROMETHEUS_MULTIPROC_DIR`` and `/metrics` adds them up (`risk_service.metrics`). Files of a
previous run would be added too, so the directory is cleared when gunicorn starts; a dead
worker's live gauges are dropped; a directory `risk serve` created (``RISK_METRICS_DIR_OWNED``)
is removed at exit. Settings are command-line flags; this module only holds hooks.
"""

from __future__ import annotations

import glob
import importlib
import os
import shutil
from typing import Any


def _metrics_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# Imported by the master once, before it forks any worker (none starts a thread or opens a
# file); OMP_NUM_THREADS is already 1 (`risk serve` sets it before gunicorn starts).
LIBRARIES = ("numpy", "pandas", "numba", "lightgbm", "sklearn", "flask", "orjson", "redis")


def on_starting(server: Any) -> None:
    """In the master, before any worker: forget the values of an earlier run; import the
    libraries every worker imports (~2 s, LightGBM with scikit-learn and SciPy the most), so a
    worker and its scoring process start with them, and a worker that replaces a dead one
    serves again that much sooner. The project's own modules stay the workers' (their metrics
    are per process, and a reload by SIGHUP loads the service's code anew)."""
    path = _metrics_dir()
    if path is not None:
        os.makedirs(path, exist_ok=True)
        for name in glob.glob(os.path.join(path, "*.db")):
            os.remove(name)
    for library in LIBRARIES:
        importlib.import_module(library)


def post_fork(server: Any, worker: Any) -> None:
    """In a new worker: with ``--reuse-port`` (several workers on Redis), the arbiter has just
    opened this worker's own listening sockets, before its application loads (seconds): the
    kernel would hand it a share of the new connections meanwhile, each waiting out the boot
    (retries after a worker was killed took 2-4 s, bench/faults.py). Closed here; the worker
    opens them once loaded (`BufferingThreadWorker.load_wsgi`) and the others take every
    connection until then. With one worker there is no other to take them: it keeps them."""
    if getattr(worker, "listens_when_loaded", None) is None or server.cfg.workers < 2:
        return
    if not (server.cfg.reuse_port and worker.sockets):
        return
    for listener in worker.sockets:
        listener.close()
    worker.sockets = []
    worker.listens_when_loaded = True


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, once it has stopped serving: with the in-memory state, write it for the
    next start (`risk_service/snapshot.py`). Not reached when the worker is killed."""
    app = getattr(worker, "wsgi", None)
    if app is None or not hasattr(app, "extensions"):
        return
    from risk_service.service import save_snapshot

    try:
        save_snapshot(app)
    except Exception:  # the stop goes on: the next start is empty, as after a crash
        server.log.exception("could not write the state snapshot")


def child_exit(server: Any, worker: Any) -> None:
    """In the master, when a worker has exited: its live gauges no longer count."""
    path = _metrics_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)


def on_exit(server: Any) -> None:
    """In the master, at shutdown: remove the metrics directory if `risk serve` made it."""
    path = _metrics_dir()
    if path is not None and os.environ.get("RISK_METRICS_DIR_OWNED") == "1":
        shutil.rmtree(path, ignore_errors=True)
