"""``sirad batch``: grade every series of a source on a Dask cluster, writing each row as it finishes.

The client discovers the series (headers only), drops those already in the results store, submits
one task per series and writes each row the moment its future completes (``as_completed``): a crash
of the client loses at most the cases in flight, and a rerun picks up where it stopped.

Faults: a bad file is a ``failed`` row from the task itself. A worker process that dies (killed,
or over its memory limit: the nanny terminates it at 95 % of ``memory_limit``) has its task moved
to another worker by the scheduler; a task that has killed ``max_retries + 1`` workers is written
as ``failed`` with code ``worker_killed``. Each worker runs one task at a time (one thread,
``worker-saturation`` 1.0), so a case that blows the memory limit takes no other case down with it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sirad_viewer.batch.plan import Plan, WorkUnit, discover, discover_pacs
from sirad_viewer.batch.store import ResultStore
from sirad_viewer.errors import SiradError

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]


class BatchError(SiradError):
    code = "batch_error"


@dataclass
class BatchSummary:
    planned: int = 0
    already_done: int = 0
    submitted: int = 0
    ok: int = 0
    failed: int = 0
    wall_seconds: float = 0.0
    grading_seconds: float = 0.0  # from the first submission to the last row (no cluster start, no discovery)
    cancelled: bool = False
    dashboard: str | None = None
    dashboard_note: str = ""
    workers: int = 0
    failures_by_code: dict[str, int] = field(default_factory=dict)

    @property
    def cases_per_minute(self) -> float:
        n = self.submitted
        return 60.0 * n / self.grading_seconds if self.grading_seconds > 0 else 0.0


def _dashboard(client: Any) -> tuple[str | None, str]:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return None, "Dask dashboard unavailable: bokeh is not installed (pip install bokeh)"
    try:
        link = client.dashboard_link
    except Exception:  # noqa: BLE001 - the address is a convenience; the run goes on without it
        link = None
    return (link, "") if link else (None, "Dask dashboard unavailable on this scheduler")


def progress_line(done: int, total: int, failed: int, elapsed: float) -> str:
    """``12/40 done, 2 failed, 3.1 cases/min, about 9 min left``."""
    rate = 60.0 * done / elapsed if elapsed > 0 and done else 0.0
    left = (total - done) / rate * 60.0 if rate > 0 else None
    eta = "time left unknown" if left is None else (f"about {left / 60:.0f} min left" if left >= 90 else f"about {left:.0f} s left")
    return f"{done}/{total} done, {failed} failed, {rate:.1f} cases/min, {eta}"


def run_batch(source: Any, results: str, *, query: Any = None, workers: int = 2, scheduler: str | None = None,
              retry_failed: bool = False, memory_limit: str | int | None = "4GiB", max_retries: int = 2,
              bundle: str | None = None, segmenter: str | None = None, device: str = "cpu",
              progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None,
              on_start: Callable[[BatchSummary], None] | None = None) -> BatchSummary:
    """Grade every series of ``source`` not yet in ``results``.

    Parameters
    ----------
    source : str or io.pacs.Node
        A folder tree, a CSV with an ``image`` column, or a PACS node (each worker retrieves its
        series into a temporary folder, grades it and removes it).
    query : io.pacs.Query, optional
        The PACS find filters (PACS source only).
    results : str
        SQLite file (WAL) or SQLAlchemy URL.
    workers : int
        Worker processes of the local cluster (ignored with ``scheduler``).
    scheduler : str, optional
        ``tcp://HOST:PORT`` of an existing Dask scheduler.
    memory_limit : str or int, optional
        Per-worker limit of the local cluster (``"4GiB"``); ``None`` for no limit.
    max_retries : int
        How many times a case that killed its worker is run again elsewhere (local cluster).
    progress : callable
        ``progress(fraction, message)`` after discovery and after each case.
    cancel : callable
        Polled between cases; True stops the run, keeping every row already written.
    """
    import dask
    from distributed import Client, LocalCluster, as_completed
    from distributed.client import FutureCancelledError

    from sirad_viewer.batch.worker import GraderPlugin, grade_unit
    from sirad_viewer.io.pacs import Node

    prog = progress or (lambda f, m: None)
    summary = BatchSummary()
    t0 = time.perf_counter()
    if isinstance(source, Node):
        prog(0.0, f"querying {source}")
        plan: Plan = discover_pacs(source, query)
    else:
        plan = discover(source, progress=lambda f, m: prog(0.0, m), cancel=cancel)
    store = ResultStore(results)  # opened after discovery: a dead node or a missing folder leaves no store behind
    done = store.done_keys(retry_failed=retry_failed)
    for row in plan.failed:  # rejected by the scan: written at once, like any finished case
        if row["key"] not in done:
            store.put({**row, "seconds": 0.0, "worker": "client (scan)"})
            summary.failed += 1
            summary.failures_by_code[row["error_code"]] = summary.failures_by_code.get(row["error_code"], 0) + 1
    todo: list[WorkUnit] = [u for u in plan.units if u.key not in done]
    summary.planned = len(plan.units) + len(plan.failed)
    summary.already_done = len(plan.units) - len(todo) + sum(1 for r in plan.failed if r["key"] in done)
    total = len(todo) + summary.failed
    run_id = store.start_run(source=str(source), workers=None if scheduler else workers, scheduler=scheduler,
                             planned=summary.planned)
    state = "finished"
    cluster = client = None
    futures: list[Any] = []
    try:
        if not todo:
            prog(1.0, f"nothing to grade: {summary.already_done} series already in {results}")
            return summary
        cfg = {"distributed.scheduler.allowed-failures": int(max_retries),
               "distributed.scheduler.worker-saturation": 1.0,
               "distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
               "distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": 0.95}
        with dask.config.set(cfg):
            if scheduler:
                client = Client(scheduler, timeout="30s")
            else:
                try:
                    import bokeh  # noqa: F401
                    dash: str | None = "127.0.0.1:0"
                except ImportError:
                    dash = None
                cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=dash, memory_limit=memory_limit or 0)
                client = Client(cluster)
            summary.dashboard, summary.dashboard_note = _dashboard(client)
            client.register_plugin(GraderPlugin(bundle, segmenter, device=device), name="sirad-grader")
            summary.workers = len(client.scheduler_info(n_workers=-1).get("workers", {})) if hasattr(client, "scheduler_info") else 0
            if on_start is not None:
                on_start(summary)
            t_submit = time.perf_counter()
            units: dict[str, WorkUnit] = {}
            pending = iter(enumerate(todo))

            def submit_more(ac: Any = None) -> None:
                # Only as many cases in flight as the cluster has threads: no case waits on a worker behind
                # another, so a case that kills its worker takes no bystander with it, and the scheduler
                # holds a few tasks, not 100,000.
                window = max(1, sum(client.nthreads().values()))
                while sum(1 for f in futures if not f.done()) < window:
                    nxt = next(pending, None)
                    if nxt is None:
                        return
                    k, u = nxt
                    f = client.submit(grade_unit, u, bundle=bundle, segmenter=segmenter, device=device,
                                      key=f"sirad-grade-{k}-{abs(hash(u.key)) % 10**12}", pure=False)
                    units[f.key] = u
                    futures.append(f)
                    summary.submitted += 1
                    if ac is not None:
                        ac.add(f)

            submit_more()
            finished = summary.failed
            prog(finished / max(total, 1), progress_line(finished, total, summary.failed, 0.0))
            ac = as_completed(list(futures), with_results=False)
            for fut in ac:
                u = units[fut.key]
                try:
                    row = fut.result()
                except FutureCancelledError:
                    continue
                except Exception as exc:  # noqa: BLE001 - KilledWorker and scheduler errors: this case fails alone
                    name = type(exc).__name__
                    code = "worker_killed" if name == "KilledWorker" else "task_error"
                    row = {"key": u.key, "source": u.source, "status": "failed", "error_code": code,
                           "series_uid": u.series_uid or None,
                           "message": (f"the case killed its worker {max_retries + 1} time(s) (over the worker memory "
                                       f"limit {memory_limit}, or a crash); it was not graded")
                           if code == "worker_killed" else f"{name}: {exc}"[:2000],
                           "worker": None, "seconds": None}
                store.put(row)
                fut.release()
                futures.remove(fut)
                submit_more(ac)
                finished += 1
                if row["status"] == "ok":
                    summary.ok += 1
                else:
                    summary.failed += 1
                    c = row.get("error_code") or "?"
                    summary.failures_by_code[c] = summary.failures_by_code.get(c, 0) + 1
                summary.grading_seconds = time.perf_counter() - t_submit
                prog(finished / max(total, 1), progress_line(finished, total, summary.failed, summary.grading_seconds))
                if cancel is not None and cancel():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        summary.cancelled = True
        state = "cancelled"
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        summary.wall_seconds = time.perf_counter() - t0
        store.finish_run(run_id, done=summary.ok, failed=summary.failed, wall_seconds=summary.wall_seconds,
                         state=state)
        store.close()
    return summary
