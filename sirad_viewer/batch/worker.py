"""What runs inside a Dask worker: load one series, grade it, return its row.

Models are loaded once per worker process, not per case: :class:`GraderPlugin` is a Dask
``WorkerPlugin`` that the client registers on the cluster. Dask runs its ``setup`` on every worker,
including workers that join later or are restarted by their nanny after a crash, so the plugin
instance living in that worker process owns the :class:`~sirad_viewer.ai.pipeline.Grader` (torch
set to one thread). :func:`grade_unit` finds it through ``get_worker().plugins``; nothing is kept
in a module-level global. Without a worker (a plain call in tests) a grader is built for the call.

:func:`grade_unit` never raises for a bad case: a typed loader error becomes a ``failed`` row with
the loader's code, and any other exception a ``failed`` row with code ``internal_error``. Only the
death of the worker process (memory limit, crash) reaches the client, as Dask's ``KilledWorker``.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from sirad_viewer.batch.plan import WorkUnit, series_key
from sirad_viewer.errors import LoadError, SiradError

log = logging.getLogger(__name__)

PLUGIN_NAME = "sirad-grader"


class GraderPlugin(WorkerPlugin):
    """Dask ``WorkerPlugin``: one :class:`Grader` per worker process, built at worker start.

    Parameters
    ----------
    bundle, segmenter : str or None
        Bundle folders (``None``: the installed ones, found on the worker).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    threads : int
        torch intra-op threads per worker (1: the cluster, not torch, spreads the work over cores).
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, bundle: str | None = None, segmenter: str | None = None, *, device: str = "cpu",
                 threads: int = 1) -> None:
        self.bundle = bundle
        self.segmenter = segmenter
        self.device = device
        self.threads = threads
        self.grader = None
        self.load_seconds = 0.0

    def setup(self, worker: Any = None) -> None:
        self.grader = build_grader(self.bundle, self.segmenter, self.device, self.threads)

    def teardown(self, worker: Any = None) -> None:
        self.grader = None


def build_grader(bundle: str | None, segmenter: str | None, device: str, threads: int):
    import torch

    from sirad_viewer.ai.pipeline import Grader, find_bundle
    from sirad_viewer.ai.totalseg import resolve_segmenter

    torch.set_num_threads(max(1, int(threads)))
    g = Grader(find_bundle("grading", bundle), resolve_segmenter(segmenter) if segmenter else None, device=device)
    # build both networks now, so the first case is not charged with it
    g.network("grading", g.device)
    if g.segmenter is not None:
        g.network("segmentation", g.device)
    return g


def _worker_grader(bundle: str | None, segmenter: str | None, device: str):
    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(PLUGIN_NAME)
    except (ImportError, ValueError):  # not inside a Dask worker
        plugin = None
    if plugin is not None:
        if plugin.grader is None:
            plugin.setup()
        return plugin.grader
    return build_grader(bundle, segmenter, device, 1)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def result_row(unit: WorkUnit, volume: Any, res: Any) -> dict[str, Any]:
    """The store's row for a graded series (``ood_flagged`` read defensively: older results have none)."""
    d = res.to_dict()
    left, right = d["joints"]["left"], d["joints"]["right"]
    ood = getattr(res, "ood_flagged", None)
    if ood is None:
        ood = d.get("ood_flagged", (d.get("ood") or {}).get("flagged") if isinstance(d.get("ood"), dict) else None)
    meta = getattr(volume, "metadata", None)
    geometry = {"sacral_axis": d.get("sacral_axis"),
                "joints": {s: {"center_lps_mm": d["joints"][s]["center_lps_mm"]} for s in ("left", "right")}}
    return {
        "key": unit.key, "source": unit.source, "status": "ok", "error_code": None,
        "message": "; ".join(d.get("warnings") or [])[:2000] or None,
        "study_uid": getattr(meta, "study_instance_uid", "") or None,
        "series_uid": (getattr(meta, "series_instance_uid", "") or unit.series_uid) or None,
        "study_date": getattr(meta, "study_date", "") or None,
        "series_description": unit.description or getattr(meta, "series_description", "") or None,
        "left_grade": int(left["grade"]), "right_grade": int(right["grade"]),
        "left_probabilities": [float(p) for p in left["probabilities"]],
        "right_probabilities": [float(p) for p in right["probabilities"]],
        "category3_left": int(left["category3"]), "category3_right": int(right["category3"]),
        "patient_positive": bool(d["patient"]["as_positive"]),
        "patient_probability": float(d["patient"]["probability"]),
        "ood_flagged": None if ood is None else bool(ood),
        "model": d["model"]["name"], "model_version": d["model"]["version"],
        "geometry": geometry,
    }


def _retrieve(unit: WorkUnit) -> tuple[str, str]:
    """Retrieve a ``pacs`` unit's series (complete or nothing, :func:`io.pacs.retrieve`) into a fresh
    temporary folder; returns ``(series folder, temporary folder to remove)``. A PACS error is raised
    as it is (a ``failed`` row with its code)."""
    from sirad_viewer.io import pacs

    tmp = tempfile.mkdtemp(prefix="sirad-batch-")
    try:
        res = pacs.retrieve(unit.node, unit.study_uid, os.path.join(tmp, "series"), series_uids=[unit.series_uid],
                            method="move" if unit.node.move_port else "get")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return res.folder, tmp


def grade_unit(unit: WorkUnit, *, bundle: str | None = None, segmenter: str | None = None,
               device: str = "cpu") -> dict[str, Any]:
    """Load and grade one series; return its row (``ok`` or ``failed``), never raise for a bad case."""
    from sirad_viewer.io import load_series, scan

    t0 = time.perf_counter()
    row: dict[str, Any]
    tmp: str | None = None
    try:
        folder = unit.source
        if unit.kind == "pacs":
            folder, tmp = _retrieve(unit)
        result = scan(folder)
        if unit.kind == "file":
            info = result.series[result.chosen]
        else:
            found = [s for s in result.series if series_key(s, folder) == unit.key]
            if not found:
                raise LoadError(f"series {unit.series_uid or unit.description!r} is no longer in this folder",
                                code="not_found", path=unit.source)
            info = found[0]
        volume = load_series(info)
        grader = _worker_grader(bundle, segmenter, device)
        res = grader(volume, heatmaps=False)
        row = result_row(unit, volume, res)
    except SiradError as exc:
        row = {"key": unit.key, "source": unit.source, "status": "failed", "error_code": exc.code,
               "message": exc.user_message(), "series_uid": unit.series_uid or None,
               "series_description": unit.description or None}
    except MemoryError as exc:
        row = {"key": unit.key, "source": unit.source, "status": "failed", "error_code": "out_of_memory",
               "message": f"ran out of memory while grading: {exc}", "series_uid": unit.series_uid or None}
    except Exception as exc:  # noqa: BLE001 - one broken case must not stop the batch; the code says what
        log.exception("grading %s failed", unit.source)
        row = {"key": unit.key, "source": unit.source, "status": "failed", "error_code": "internal_error",
               "message": f"{type(exc).__name__}: {exc}"[:2000], "series_uid": unit.series_uid or None}
    finally:
        if tmp is not None:  # the retrieved series is graded: remove it, or an archive run fills the disk
            shutil.rmtree(tmp, ignore_errors=True)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    row["worker"] = _worker_name()
    return row
