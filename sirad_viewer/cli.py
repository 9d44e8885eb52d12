"""``sirad``: the headless command line.

Subcommands import what they need when they run, so ``sirad --help`` and ``sirad --version``
start instantly and never import torch, monai, vtk or Qt.

Exit codes: 0 success (warnings allowed), 2 bad input (one line on stderr, or a JSON error
object with ``--json``), 130 cancelled.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from sirad_viewer import __version__
from sirad_viewer.errors import SiradError

log = logging.getLogger(__name__)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


# --- info ------------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    from sirad_viewer.io import load_series, scan

    try:
        result = scan(args.path)
        # Reading the chosen series' pixels is the only honest answer to "can it be loaded?".
        volume = load_series(result.series[result.chosen])
        chosen = result.series[result.chosen]
        known = {(w.code, w.message) for w in chosen.warnings}
        chosen.warnings.extend(w for w in volume.warnings if (w.code, w.message) not in known)
    except SiradError as exc:
        if args.json:
            _print_json({"error": exc.to_dict()})
        print(f"sirad info: {exc.user_message()}", file=sys.stderr)
        return 2
    if args.json:
        d = result.to_dict()
        _print_json(d)
        return 0
    print(f"{result.path}: {len(result.series)} series")
    for i, s in enumerate(result.series):
        mark = "*" if i == result.chosen else " "
        print(f"{mark} [{i + 1}] {s.description or '(no description)'}  {s.modality or '?'}  {s.kind}  "
              f"{s.n_images} images")
        print(f"      uid        {s.uid or '(empty)'}")
        print(f"      shape      {s.shape[0]} x {s.shape[1]} x {s.shape[2]} (slice, row, column)")
        print(f"      spacing    {s.spacing_mm[0]:.4g} x {s.spacing_mm[1]:.4g} x {s.spacing_mm[2]:.4g} mm")
        print(f"      origin     ({', '.join(f'{v:.2f}' for v in s.origin_lps_mm)}) mm LPS")
        print("      direction  " + "  ".join("(" + ", ".join(f"{v:.3f}" for v in row) + ")" for row in s.direction))
        for w in s.warnings:
            print(f"      warning    [{w.code}] {w.message}")
    print(f"chosen: {result.reason}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} file(s):")
        for path, code, msg in result.skipped[:20]:
            print(f"  [{code}] {path}: {msg}")
        if len(result.skipped) > 20:
            print(f"  ... and {len(result.skipped) - 20} more")
    return 0


# --- phantom ---------------------------------------------------------------------------------

def cmd_phantom(args: argparse.Namespace) -> int:
    from sirad_viewer.phantom import PhantomSpec, make_phantom, random_spec, write_phantom

    if args.anatomy == "atlas":
        from sirad_viewer.phantom.atlas_options import atlas_spec_from_args
        from sirad_viewer.phantom.atlas_phantom import make_atlas_phantom

        spec = atlas_spec_from_args(args)
        phantom = make_atlas_phantom(spec)
    elif args.vary:
        spec = random_spec(args.seed, left_grade=args.left, right_grade=args.right, site=args.site or "phantom-A",
                           matrix=args.matrix)
        phantom = make_phantom(spec)
    else:
        spec = PhantomSpec(left_grade=args.left, right_grade=args.right, seed=args.seed,
                           matrix=args.matrix or 256, slice_thickness_mm=args.thickness or 2.0,
                           slice_spacing_mm=args.spacing or args.thickness or 2.0, site=args.site or "phantom-A")
        phantom = make_phantom(spec)
    files = write_phantom(phantom, args.out, fmt=args.format, compression=args.compression)
    v = phantom.volume
    print(f"phantom L{spec.left_grade} R{spec.right_grade} seed {spec.seed}: {v.shape[0]}x{v.shape[1]}x{v.shape[2]}, "
          f"spacing {v.spacing[0]:.2f}x{v.spacing[1]:.2f}x{v.spacing[2]:.2f} mm, "
          f"{len(phantom.truth['lesions'])} planted lesion(s)")
    for k, f in files.items():
        print(f"  {k:7s} {f}")
    print("  synthetic data with a planted fake identity; not patient data")
    return 0


def cmd_phantom_dataset(args: argparse.Namespace) -> int:
    from sirad_viewer.phantom.dataset import make_dataset

    def progress(k: int, n: int) -> None:
        if k == n or k % max(1, n // 10) == 0:
            print(f"  {k}/{n} phantoms", flush=True)

    extra = {}
    if args.anatomy == "atlas":
        from sirad_viewer.phantom.atlas_options import atlas_dataset_options

        extra = atlas_dataset_options(args)
    path = make_dataset(args.out, args.n, site=args.site or ("atlas-mixed" if args.anatomy == "atlas" else "phantom-A"),
                        seed=args.seed, matrix=args.matrix, fmt=args.format, workers=args.workers, progress=progress,
                        anatomy=args.anatomy, **extra)
    print(f"dataset written: {path} (synthetic phantoms with planted fake identities; not patient data)")
    return 0


# --- study ---------------------------------------------------------------------------------

def _open_store(path: str, key_path: str | None = None):
    from sirad_viewer.study.integrity import CoordinatorKey
    from sirad_viewer.study.protocol import StudyError
    from sirad_viewer.study.store import StudyStore

    if "://" not in path and not Path(path).exists():
        raise StudyError("does not exist (create it with 'sirad study create')", path=path, code="not_found")
    return StudyStore(path, key=CoordinatorKey.load(key_path) if key_path else None)


def _checked_store(args: argparse.Namespace):
    """Open the study and verify it (with the coordinator key when given): (store, ok)."""
    store = _open_store(args.study, getattr(args, "key", None))
    v = store.verify()
    if v.ok:
        print(f"event log: {v.message}", file=sys.stderr if getattr(args, "quiet_check", False) else sys.stdout)
    else:
        print("event log: TAMPERED:", file=sys.stderr)
        for problem in v.problems:
            print(f"  - {problem}", file=sys.stderr)
    return store, v.ok


def cmd_study_create(args: argparse.Namespace) -> int:
    from sirad_viewer.study.integrity import CoordinatorKey, default_key_path, new_study_id
    from sirad_viewer.study.protocol import Protocol, StudyError
    from sirad_viewer.study.store import StudyStore

    protocol = Protocol.load(args.protocol)
    if StudyStore(args.study).get_meta("protocol") is not None:
        raise StudyError("already holds a study; open it instead of creating it again", path=args.study, code="exists")
    study_id = new_study_id()
    key_path = Path(args.key) if args.key else default_key_path(args.study, study_id)
    if "://" not in args.study and Path(args.study).resolve().parent in Path(key_path).resolve().parents:
        print(f"warning: {key_path} is inside the study folder; keep the coordinator key where readers of the "
              "study folder cannot read it", file=sys.stderr)
    key = CoordinatorKey.new(study_id).write(key_path)
    store = StudyStore.create(args.study, protocol, key=key)
    print(f"created {args.study}: '{protocol.name}', {protocol.design}, {len(protocol.readers)} reader(s), "
          f"{len(protocol.cases)} case(s), protocol hash {protocol.hash[:16]}")
    print(f"coordinator key: {key_path} (keep it outside the study folder; 'sirad study status {args.study} "
          f"--key {key_path}' checks the log against it)")
    store.close()
    return 0


def _read_cases(path: str) -> list:
    import csv

    from sirad_viewer.study.protocol import Case, StudyError

    p = Path(path)
    if not p.is_file():
        raise StudyError("does not exist or is not a file (a CSV or YAML list of cases)", path=p, code="not_found")
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        try:
            data = yaml.safe_load(p.read_text())
            items = data.get("cases", data) if isinstance(data, dict) else data
            return [Case(**{**c, "id": str(c["id"])}) for c in items]
        except (yaml.YAMLError, TypeError, KeyError, AttributeError) as exc:
            raise StudyError(f"is not a list of cases with id and path or study_uid ({type(exc).__name__}: {exc})",
                             path=p, code="bad_protocol") from exc
    cases = []
    with open(p, newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            if not row.get("id"):
                raise StudyError(f"line {i}: a case needs an id", path=p, code="bad_protocol")
            ref = None
            if row.get("left", "") != "" or row.get("right", "") != "":
                try:
                    ref = {"left": int(row["left"]), "right": int(row["right"])}
                except (KeyError, ValueError):
                    raise StudyError(f"line {i}: reference grades must be integers 0-4 in 'left' and 'right'",
                                     path=p, code="bad_protocol") from None
            cases.append(Case(id=row["id"], path=row.get("path", ""), study_uid=row.get("study_uid", ""),
                              reference=ref, site=row.get("site", "")))
    return cases


def cmd_study_add_cases(args: argparse.Namespace) -> int:
    store = _open_store(args.study, args.key)
    protocol = store.protocol
    new = _read_cases(args.cases)
    protocol.cases.extend(new)
    store.update_protocol(protocol)
    print(f"added {len(new)} case(s); {len(protocol.cases)} in total; protocol hash {protocol.hash[:16]}")
    return 0


def cmd_study_status(args: argparse.Namespace) -> int:
    from sirad_viewer.study.session import ReaderSession

    store, ok = _checked_store(args)
    p = store.protocol
    print(f"{p.name} ({p.design}), protocol {p.hash[:16]}{' (frozen)' if store.frozen else ''}")
    for r in p.readers:
        s = ReaderSession(store, r.id)
        done, total = s.progress()
        cur = s.current()
        print(f"  {r.id:<12} {done}/{total} read" + (f", next: {cur['case']} (session {cur['session']}, {cur['arm']})" if cur else ", finished"))
    return 0 if ok else 2


def cmd_study_export(args: argparse.Namespace) -> int:
    from sirad_viewer.study.analysis import write_export

    store, ok = _checked_store(args)
    if not ok:
        print("nothing exported: the event log does not verify", file=sys.stderr)
        return 2
    out = write_export(store, args.out)
    print(f"written {out}")
    return 0


def cmd_study_analyse(args: argparse.Namespace) -> int:
    from sirad_viewer.study.analysis import analyse

    store, ok = _checked_store(args)
    if not ok:
        print("not analysed: the event log does not verify", file=sys.stderr)
        return 2
    out = args.out or str(Path(args.study).with_suffix("")) + "-analysis"
    res = analyse(store, out, n_boot=args.bootstrap)
    for r in res["per_reader_arm"]:
        a5, a3, ap = r["accuracy_5"], r["accuracy_3"], r["accuracy_patient"]
        print(f"  {r['reader']:<8} {r['arm']:<22} acc5 {a5[0]:.3f} ({a5[1]:.3f}-{a5[2]:.3f})  acc3 {a3[0]:.3f}  "
              f"patient {ap[0]:.3f}  kappa_q {r['kappa_vs_reference']['quadratic']:.3f}")
    print(f"report: {Path(out) / 'report.html'}")
    return 0 if res["chain_ok"] else 2


def cmd_study_mrmc(args: argparse.Namespace) -> int:
    from sirad_viewer.study.mrmc import from_records, or_analysis, read_ratings_csv

    try:
        recs = read_ratings_csv(args.ratings)
        ratings, truth, treatments, readers, _ = from_records(recs)
        res = or_analysis(ratings, truth, treatments=treatments, readers=readers)
    except OSError as exc:
        print(f"sirad study mrmc: {args.ratings}: cannot be read: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        msg = str(exc)
        prefix = f"{args.ratings}: "
        print(f"sirad study mrmc: {args.ratings}: {msg[len(prefix):] if msg.startswith(prefix) else msg}",
              file=sys.stderr)
        return 2
    if args.json:
        _print_json(res.to_dict())
        return 0
    print(f"{len(readers)} readers, {len(treatments)} treatments, {res.n_cases} cases ({res.n_diseased} diseased)")
    for i, t in enumerate(res.treatments):
        print(f"  treatment {t}: mean AUC {res.auc[i].mean():.5f}  readers " + " ".join(f"{v:.4f}" for v in res.auc[i]))
    r = res.rrrc
    print(f"random readers, random cases: F({r['ndf']}, {r['ddf']:.2f}) = {r['f']:.3f}, p = {r['p']:.4f}")
    if "comparison" in r:
        print(f"  {r['comparison']}: {r['diff']:+.5f}, 95% CI ({r['ci'][0]:.5f}, {r['ci'][1]:.5f})")
    print(f"fixed readers, random cases:  chi2 = {res.frrc['chi2']:.4f}, p = {res.frrc['p']:.4f}")
    print(f"random readers, fixed cases:  F = {res.rrfc['f']:.3f}, p = {res.rrfc['p']:.4f}")
    return 0


def cmd_study_demo(args: argparse.Namespace) -> int:
    from sirad_viewer.study.demo import run_demo

    run_demo(args.out, n_cases=args.cases)
    return 0


# --- AI: grade, train, evaluate ----------------------------------------------------------------

def _grade_text(d: dict) -> str:
    lines = []
    if d.get("ood_flagged"):  # before any grade, never in a footnote
        lines.append(f"!! {d['reliability']}")
    lines += [f"model      {d['model']['name']} {d['model']['version']} (segmentation: {d['model'].get('segmentation', '?')})",
              f"device     {d['device']}"]
    for side in ("right", "left"):
        j = d["joints"][side]
        probs = " ".join(f"{g}:{p:.2f}" for g, p in enumerate(j["probabilities"]))
        cats = " ".join(f"{p:.2f}" for p in j["category3_probabilities"])
        c = j["center_lps_mm"]
        ood = j.get("ood")
        flag = "UNLIKE THE TRAINING DATA, NOT RELIABLE: " if ood and ood["flagged"] else ""
        lines.append(f"{side:<6} SIJ  {flag}grade {j['grade']} (category {j['category3_label']})  (p {probs}; "
                     f"category p {cats})  at ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm LPS"
                     + (f"  OOD score {ood['score']:.1f} / threshold {ood['threshold']:.1f}" if ood else ""))
    pt = d["patient"]
    lines.append(f"patient    {'UNRELIABLE: ' if d.get('ood_flagged') else ''}modified New York "
                 f"{'POSITIVE' if pt['as_positive'] else 'negative'} (P(positive) = {pt['probability']:.2f}; positive "
                 "when P >= 0.5)")
    if pt.get("explanation"):
        lines.append(f"           {pt['explanation']}")
    lines.append("timings    " + ", ".join(f"{k} {v:.2f} s" for k, v in d["timings_s"].items()))
    for w in d["warnings"]:
        lines.append(f"warning    {w}")
    lines.append(f"NOTE       {d['disclaimer']}")
    return "\n".join(lines)


def cmd_grade(args: argparse.Namespace) -> int:
    from sirad_viewer.ai.pipeline import Grader, find_bundle, write_heatmaps
    from sirad_viewer.io import load_series, scan

    import time

    try:
        from sirad_viewer.ai.totalseg import resolve_segmenter

        segmenter = resolve_segmenter(args.segmenter)  # TotalSegmentator missing: refused before the CT is read
        t_read = time.perf_counter()
        result = scan(args.path)
        volume = load_series(result.series[result.chosen])
        t_read = time.perf_counter() - t_read
        grader = Grader(find_bundle("grading", args.bundle), segmenter, device=args.device)
        res = grader(volume, heatmaps=bool(args.heatmaps or args.dicom),
                     progress=(lambda s, f: print(f"  {s}...", file=sys.stderr)) if args.verbose else None)
    except SiradError as exc:
        if args.json == "-":  # standard output, as for a result (it wrote a file named '-')
            print(json.dumps({"error": exc.to_dict()}, indent=2))
        elif args.json:
            Path(args.json).write_text(json.dumps({"error": exc.to_dict()}, indent=2) + "\n")
        raise
    from sirad_viewer.io.deid import source_reference

    d = res.to_dict()
    d["timings_s"] = {"read": round(t_read, 3), **d["timings_s"]}  # the CT file to a volume in memory
    d["source"] = source_reference(args.path, include_path=args.include_source_path)
    if args.heatmaps:
        t_write = time.perf_counter()
        paths = write_heatmaps(res, volume, args.heatmaps)
        d["heatmaps"] = {p.stem.split("_")[-1].split(".")[0]: str(p) for p in paths}
        d["timings_s"]["write_heatmaps"] = round(time.perf_counter() - t_write, 3)
    if args.dicom:
        d["dicom"] = _write_dicom_results(res, volume, args.dicom)
    if args.json:
        if args.json == "-":
            _print_json(d)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(d, indent=2) + "\n")
    if args.json != "-":
        print(_grade_text(d))
    return 0


def _write_dicom_results(res: Any, volume: Any, out: str) -> dict[str, str]:
    from sirad_viewer.io.dicom_results import write_ai_objects
    from sirad_viewer.viz.report import key_images

    imgs = key_images(volume, res)
    files = write_ai_objects(res, volume, out, key_pixel_mm=0.6,
                             key_images={s: imgs[f"{s}_heatmap"] for s in ("right", "left") if f"{s}_heatmap" in imgs})
    print(f"DICOM results in {out}: " + ", ".join(sorted(files)), file=sys.stderr)
    return {k: str(v) for k, v in files.items()}


def cmd_train(args: argparse.Namespace) -> int:
    from sirad_viewer.ai.pipeline import find_bundle
    from sirad_viewer.ai.train import train_grader

    b = train_grader(args.data, args.out, segmenter=find_bundle("segmentation", args.segmenter), epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, patience=args.patience, seed=args.seed, resume=args.resume,
                     name=args.name, version=args.model_version, device=args.device, spacing_mm=args.spacing,
                     size=args.size, frame=args.frame, config=json.loads(args.config) if args.config else None,
                     init=args.init, long_axis=args.long_axis, augmentation=args.augmentation, select=args.select,
                     test_time_turns=args.test_time_turns, hu_reference=args.hu_reference,
                     pre_blur_fwhm_mm=args.pre_blur, consistency=args.consistency,
                     test_time_jitter=tuple(args.test_time_jitter) if args.test_time_jitter else (0.0, 0.0))
    m = b.metadata
    print(f"wrote {b.path}: {b.name} {b.version}, temperature {m['calibration']['temperature']}, "
          f"validation accuracy {m['metrics']['validation']['accuracy']}, "
          f"quadratic kappa {m['metrics']['validation']['kappa_quadratic']}")
    return 0


def cmd_train_segmenter(args: argparse.Namespace) -> int:
    from sirad_viewer.ai.segnet import train_segmenter

    def prog(i: int, n: int, loss: float) -> None:
        if i % 25 == 0 or i == n:
            print(f"step {i}/{n} loss {loss:.3f}", file=sys.stderr, flush=True)

    from sirad_viewer.ai.bundle import load_bundle

    b = train_segmenter(args.data if len(args.data) > 1 else args.data[0], args.out, steps=args.steps,
                        spacing_mm=args.spacing, seed=args.seed, progress=prog, lr=args.lr,
                        version=args.model_version, init=load_bundle(args.init) if args.init else None,
                        average_init=args.average_init, rotate_deg=args.rotate, shift_vox=args.shift)
    print(f"wrote {b.path}")
    return 0


def cmd_train_segmenter_refine(args: argparse.Namespace) -> int:
    from sirad_viewer.ai.segrefine import train_refiner

    def prog(i: int, n: int, loss: float) -> None:
        if i % 25 == 0 or i == n:
            print(f"step {i}/{n} loss {loss:.3f}", file=sys.stderr, flush=True)

    doc = train_refiner(args.data, args.segmenter, steps=args.steps, seed=args.seed, lr=args.lr, cache=args.cache,
                        progress=prog)
    print(f"added the 2 mm second stage to {args.segmenter}: {doc}")
    return 0


def cmd_evaluate_segmenter(args: argparse.Namespace) -> int:
    from sirad_viewer.ai.pipeline import find_bundle
    from sirad_viewer.ai.segnet import evaluate_segmenter

    doc = evaluate_segmenter(args.data, find_bundle("segmentation", args.segmenter), splits=tuple(args.split.split(",")),
                             limit=args.limit, device=args.device if args.device != "auto" else "cpu")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    for g, m in doc["groups"].items():
        print(f"{g} subjects ({m['cases']} cases): " + ", ".join(f"{k} Dice {v['mean']:.3f} (min {v['min']:.3f})"
                                                                 for k, v in m.items() if k != "cases"))
    return 0


def cmd_joint_template(args: argparse.Namespace) -> int:
    from sirad_viewer.ai.register import add_template

    e = add_template(args.bundle, args.data, args.out, segmenter_path=args.segmenter, split=args.split, limit=args.limit,
                     version=args.model_version, device=args.device, min_step_mm=args.min_step)
    print(f"wrote {args.out}: joint template {e['file']} from {e['built_from']['joints']} joints of split "
          f"{e['built_from']['split']!r} ({e['built_from']['segmenter']}); its crops are now cut along the segmentation's "
          f"boxes registered to it. Calibrate it next: sirad calibrate {args.out} DATA.csv")
    return 0


# --- calibrate / evaluate (honest confidence: sirad_viewer/ai/calibration.py, evaluate.py) ---------

def cmd_calibrate(args: argparse.Namespace) -> int:
    from sirad_viewer.ai.calibration import calibrate_bundle

    res = calibrate_bundle(args.bundle, args.data, split=args.split, segmenter_path=args.segmenter, device=args.device,
                           min_joints=args.min_joints, ood_sites=args.ood_sites or None, cache_dir=args.cache)
    c, o = res["calibration"], res["ood"]
    print(f"wrote {Path(args.bundle) / 'metadata.json'}: temperature {c['temperature']} on {c['joints']} joints "
          f"({c['failed_cases']} case(s) not graded); ECE {c['val_before']['ece']:.3f} -> {c['val_after']['ece']:.3f}, "
          f"Brier {c['val_before']['brier']:.3f} -> {c['val_after']['brier']:.3f}; OOD threshold {o['threshold']:.2f} "
          f"({o['n_fit']} joints of {', '.join(o['fit_sites']) or 'all sites'}, cross-fitted pass rate "
          f"{o['cross_fitted_pass_rate']:.2f})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if getattr(args, "stress", False):  # the stress sweep (sirad_viewer.ai.stress)
        from sirad_viewer.ai.stress import stress_sweep

        stress_sweep(args.data, args.out, bundle_path=args.bundle, segmenter_path=args.segmenter,
                     split="test" if args.split == "auto" else args.split, limit=args.limit, device=args.device)
        print((Path(args.out) / "stress.md").read_text())
        print(f"wrote {args.out}/stress.json, stress.md and stress.csv")
        return 0
    from sirad_viewer.ai.evaluate import evaluate

    doc = evaluate(args.data, args.bundle, args.out, by=args.by, split=args.split, device=args.device,
                   segmenter_path=args.segmenter, n_boot=args.bootstrap, cache_dir=args.cache)
    print((Path(args.out) / "summary.md").read_text())
    print(f"wrote {args.out}/metrics.json, summary.md, predictions.csv, ROC curves and reliability diagrams"
          + (f"; {len(doc['failures'])} case(s) could not be graded (counted as failures)" if doc["failures"] else ""))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sirad_viewer.ai.pipeline import Grader, find_bundle
    from sirad_viewer.io import load_series, scan
    from sirad_viewer.state.reading import default_log_path, latest_reading
    from sirad_viewer.viz.report import write_report

    result = scan(args.path)
    volume = load_series(result.series[result.chosen])
    from sirad_viewer.io.deid import source_reference

    reading = latest_reading(args.reads or default_log_path(), source_reference(Path(args.path).resolve()))
    if args.right is not None or args.left is not None:
        reading = {"case": str(args.path), "pre_ai": {"right": args.right, "left": args.left, "at": None}, "post_ai": None}
    if args.dicom:
        from sirad_viewer.io.dicom_results import write_reader_report

        if not reading:
            raise SiradError("no locked reader grades for this case (reads log, or --right/--left)", path=args.path)
        reading = dict(reading)
        if args.reader != "reader" or not reading.get("reader"):
            reading["reader"] = args.reader
        print(f"reader's SR written to {write_reader_report(reading, volume, args.dicom)}")
        if not args.out:
            return 0
    if not args.out:
        raise SiradError("give --out FILE.html/.pdf and/or --dicom DIR")
    grader = Grader(find_bundle("grading", args.bundle), device=args.device)
    res = grader(volume, heatmaps=True)
    out = write_report(args.out, volume, res, reading, grader.bundle.metadata,
                       include_source_path=args.include_source_path)
    print(f"report written to {out}" + ("" if reading else " (no reader grades found for this case)"))
    return 0


# --- deidentify (issue #12; logic in sirad_viewer.io.deid) ------------------------------------

def cmd_deidentify(args: argparse.Namespace) -> int:
    from sirad_viewer.io.deid import DeidOptions, load_or_create_key, parse_private_rule, source_reference
    from sirad_viewer.io.deid.files import deidentify_path

    from sirad_viewer.errors import ExportError, LoadError

    # refuse a missing input or an existing output before a project key is created as a side effect
    if not Path(args.path).exists():
        raise LoadError("does not exist", code="not_found", path=args.path)
    out = Path(args.out)
    if out.exists() and (out.suffix.lower() == ".zip" or not out.is_dir() or any(out.iterdir())):
        raise ExportError("already exists; give a new output folder (nothing was overwritten)", code="exists", path=out)
    key, key_path, created = load_or_create_key(args.key, outside=args.out)
    if created:
        print(f"created a new project key at {key_path}: keep it secret, outside the data, and reuse it "
              "so later exports of the same patients link up", file=sys.stderr)
    opts = DeidOptions(retain_dates_shifted=args.keep_dates_shifted, clean_descriptions=args.clean_descriptions,
                       keep_private=frozenset(parse_private_rule(r) for r in args.keep_private),
                       allow_burned_in=args.allow_burned_in)
    rep = deidentify_path(args.path, args.out, key=key, options=opts, skip_unreadable=args.skip_unreadable)
    for name, why in rep.skipped:
        print(f"skipped {name}: {why}", file=sys.stderr)
    for name in rep.flagged:
        print(f"WARNING {name}: burned-in annotation not removed; written with PatientIdentityRemoved NO",
              file=sys.stderr)
    print(f"wrote {rep.written} de-identified object(s) in {len(rep.series)} series to {rep.out} "
          f"(input {source_reference(args.path)}, key {key_path})")
    return 0


def _add_deidentify_parser(sub: Any) -> None:
    d = sub.add_parser("deidentify", help="write a de-identified copy of a DICOM file, folder or zip",
                       description="PS3.15 Annex E basic confidentiality profile, recursive: names, IDs, dates, "
                                   "descriptions and private tags removed; UIDs remapped with a secret project key "
                                   "(HMAC), geometry kept. Refuses objects with burned-in annotation.")
    d.add_argument("path", help="DICOM file, folder or .zip")
    d.add_argument("--out", required=True, help="new folder (or FILE.zip); never inside the input")
    d.add_argument("--key", help="project key file (created if missing; default $SIRAD_DEID_KEY or "
                                 "~/.config/sirad/deid.key); never inside --out")
    d.add_argument("--keep-dates-shifted", action="store_true",
                   help="keep dates, each patient's moved back by the same secret number of days")
    d.add_argument("--clean-descriptions", action="store_true",
                   help="keep descriptions and protocol name with identifying words removed (default: removed)")
    d.add_argument("--keep-private", action="append", default=[], metavar="GROUP,CREATOR,ELEMENT",
                   help="keep one private element, e.g. '0019,SIEMENS CT VA0  COAD,10' (repeatable)")
    d.add_argument("--allow-burned-in", action="store_true",
                   help="write objects with BurnedInAnnotation YES, marked PatientIdentityRemoved NO")
    d.add_argument("--skip-unreadable", action="store_true",
                   help="skip DICOM files that cannot be read instead of stopping (they are listed)")
    d.set_defaults(func=cmd_deidentify)


# --- pacs (query/retrieve/store; logic in sirad_viewer.io.pacs) ------------------------------

def _pacs_node(args: argparse.Namespace):
    import os

    from sirad_viewer.io.pacs import parse_node

    return parse_node(args.node, calling_aet=args.calling_aet, move_port=args.move_port or 0, timeout_s=args.timeout,
                      username=os.environ.get("SIRAD_PACS_USER", ""), password=os.environ.get("SIRAD_PACS_PASSWORD", ""),
                      token=os.environ.get("SIRAD_PACS_TOKEN", ""))


def cmd_pacs(args: argparse.Namespace) -> int:
    from sirad_viewer.io import pacs

    node = _pacs_node(args)
    if args.pacs_command == "echo":
        print(f"{node}: answered in {pacs.echo(node) * 1000:.0f} ms")
    elif args.pacs_command == "find":
        q = pacs.Query(patient_id=args.patient_id or "", name=args.name or "", study_date=args.study_date or "",
                       modality=args.modality or "", accession=args.accession or "")
        studies = pacs.find(node, q)
        if args.json:
            _print_json([s.to_dict() for s in studies])
            return 0
        for s in studies:
            print(f"{s.study_uid}  {s.patient_id}  {s.patient_name}  {s.study_date}  {s.accession}  {s.description}  "
                  f"{'/'.join(s.modalities)}")
            for se in s.series:
                th = f"{se.slice_thickness_mm:g} mm" if se.slice_thickness_mm else "? mm"
                print(f"    {se.series_uid}  {se.modality}  {se.n_images} images  {th}  {se.description}")
        print(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}")
    elif args.pacs_command == "get":
        res = pacs.retrieve(node, args.study, args.out, series_uids=args.series or None,
                            method="move" if args.move_port else "get",
                            progress=(lambda f, m: print(f"  {m}", file=sys.stderr)) if args.verbose else None)
        print(f"retrieved {len(res.files)} of {res.expected} files into {res.folder}")
    elif args.pacs_command == "store":
        print(f"stored {pacs.store(node, args.paths)} file(s) on {node}")
    return 0


def _add_pacs_parser(sub) -> None:
    pc = sub.add_parser("pacs", help="PACS: echo, find, get, store (DICOMweb URL or AET@host:port)",
                        description="Talk to a PACS. NODE is a DICOMweb base URL (http[s]://host:port/dicom-web) or "
                                    "AET@host:port (DIMSE). Credentials come from $SIRAD_PACS_USER/$SIRAD_PACS_PASSWORD "
                                    "or $SIRAD_PACS_TOKEN and are never printed or logged.")
    ps = pc.add_subparsers(dest="pacs_command", metavar="PACS_COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("node")
    common.add_argument("--calling-aet", default="SIRAD", help="our AE title (default SIRAD)")
    common.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds (default 10)")
    common.add_argument("--move-port", type=int, help="retrieve by C-MOVE to our storage SCP on this port "
                                                       "(the PACS must know our AE title); default C-GET")
    ps.add_parser("echo", parents=[common], help="C-ECHO (or a one-result QIDO-RS)")
    f = ps.add_parser("find", parents=[common], help="find studies and their series")
    f.add_argument("--patient-id")
    f.add_argument("--name", help="patient name, * wildcards allowed")
    f.add_argument("--study-date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    f.add_argument("--modality")
    f.add_argument("--accession")
    f.add_argument("--json", action="store_true", help="a JSON list of studies with their series")
    g = ps.add_parser("get", parents=[common], help="retrieve a study or series (complete, or nothing)")
    g.add_argument("--study", required=True)
    g.add_argument("--series", action="append", help="a series UID (repeatable); default: the whole study")
    g.add_argument("--out", required=True)
    s = ps.add_parser("store", parents=[common], help="C-STORE or STOW-RS files or folders")
    s.add_argument("paths", nargs="+")
    pc.set_defaults(func=cmd_pacs)


# --- batch: archive screening on Dask (logic in sirad_viewer.batch) ---------------------------------

def cmd_batch(args: argparse.Namespace) -> int:
    from sirad_viewer.batch.cli import run_command

    return run_command(args)


def add_batch_parser(sub: Any) -> None:
    from sirad_viewer.batch.cli import add_parser

    add_parser(sub, cmd_batch)


# --- parser ----------------------------------------------------------------------------------

def _add_atlas_options(p: argparse.ArgumentParser, *, dataset: bool) -> None:
    from sirad_viewer.phantom.atlas_options import add_atlas_arguments

    add_atlas_arguments(p, dataset=dataset)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sirad",
        description="SIRAD Viewer command line: inspect CT series, grade sacroiliac joints with the AI model, "
                    "train and evaluate models, make synthetic phantoms, run reader studies.",
    )
    p.add_argument("--version", action="version", version=f"sirad {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="list the series in a file/folder/zip, their geometry and warnings",
                          description="List series (DICOM folder, .zip, NIfTI, NRRD, MHA/MHD), their "
                                      "geometry in LPS and the loader's warnings. Exit 0 when a volume can "
                                      "be loaded, 2 on input errors.")
    info.add_argument("path", help="file, folder or .zip")
    info.add_argument("--json", action="store_true", help="print the stable JSON form (see README)")
    info.set_defaults(func=cmd_info)

    ph = sub.add_parser("phantom", help="write a synthetic pelvis CT with known grades",
                        description="Write a synthetic pelvic CT phantom with known per-joint grades, its "
                                    "label map and truth.json. Synthetic: not patient data.")
    ph.add_argument("--left", type=int, default=0, choices=range(5), metavar="0-4", help="left joint grade")
    ph.add_argument("--right", type=int, default=0, choices=range(5), metavar="0-4", help="right joint grade")
    ph.add_argument("--out", required=True, help="output folder")
    ph.add_argument("--format", choices=("nifti", "dicom"), default="nifti")
    ph.add_argument("--compression", choices=("none", "rle", "j2k", "jpeg-ls"), default="none",
                    help="DICOM transfer syntax (lossless)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--matrix", type=int, default=None, help="in-plane matrix (default 256)")
    ph.add_argument("--thickness", type=float, default=None, help="slice thickness in mm (analytic default 2)")
    ph.add_argument("--spacing", type=float, default=None, help="slice spacing in mm (default: thickness)")
    ph.add_argument("--vary", action="store_true",
                    help="seeded variation of size, pose, table position, slice geometry, noise and blur")
    ph.add_argument("--site", default=None, help="scanner-like profile: phantom-A/B/C with --vary; "
                    "atlas-A/B/C/mixed with --anatomy atlas")
    _add_atlas_options(ph, dataset=False)
    ph.set_defaults(func=cmd_phantom)

    pd = sub.add_parser("phantom-dataset", help="write a labelled phantom set and its DATA.csv",
                        description="Write N varied phantoms with balanced grades and DATA.csv (image, left, right, "
                                    "site, split, labels, truth) for 'sirad train' and 'sirad evaluate'. --site "
                                    "changes scanner-like properties to mimic another centre.")
    pd.add_argument("--n", type=int, required=True)
    pd.add_argument("--out", required=True)
    pd.add_argument("--site", default=None, help="phantom-A, phantom-B or phantom-C; atlas-A/B/C/mixed for atlas")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--matrix", type=int, default=128, help="in-plane matrix (default 128; the FOV stays 320-420 mm)")
    pd.add_argument("--format", choices=("nifti", "dicom"), default="nifti")
    pd.add_argument("--workers", type=int, default=None, help="processes (default: the CPU count)")
    _add_atlas_options(pd, dataset=True)
    pd.set_defaults(func=cmd_phantom_dataset)

    g = sub.add_parser("grade", help="grade both sacroiliac joints of a CT with the AI model",
                       description="Segment the pelvis, find both sacroiliac joints, grade each 0-4 (modified New York) "
                                   "with calibrated probabilities, the 3-category result and the patient-level rule. "
                                   "The demo models are phantom-trained: not for clinical use.")
    g.add_argument("path", help="CT: file, DICOM folder or .zip")
    g.add_argument("--json", metavar="OUT", help="write the JSON result to OUT ('-' for standard output)")
    g.add_argument("--heatmaps", metavar="DIR", help="write one Grad-CAM NIfTI per joint on the CT grid")
    g.add_argument("--dicom", metavar="DIR", help="write the result as DICOM into DIR: SR (TID 1500), SEG, parametric "
                                                   "maps, key images (a NIfTI source is first written as a CT series)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    g.add_argument("--bundle", help="grading bundle folder (default: the installed one)")
    g.add_argument("--segmenter", help="segmentation bundle folder (default: the installed one), or 'totalsegmentator' "
                                       "('totalsegmentator-full' for its 1.5 mm model) when TotalSegmentator and its "
                                       "weights are installed (never downloaded by this program)")
    g.add_argument("--include-source-path", action="store_true",
                   help="write the input path into the JSON (default: a non-identifying sha256 reference)")
    g.set_defaults(func=cmd_grade)

    t = sub.add_parser("train", help="train a grading bundle from DATA.csv",
                       description="Train the 3D DenseNet grader on DATA.csv (image,left,right,site,split): the same "
                                   "segmentation and localisation as 'sirad grade', cached crops, augmentation, class "
                                   "weighting, early stopping, per-epoch checkpoints (--resume), temperature scaling.")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True, help="bundle folder to write")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--patience", type=int, default=8, help="early stopping: epochs without validation improvement")
    t.add_argument("--spacing", type=float, default=1.25, help="crop voxel size in mm")
    t.add_argument("--size", type=int, default=64, help="crop edge in voxels")
    t.add_argument("--config", help='DenseNet configuration as JSON (default {"init_features": 16, "growth_rate": 8, '
                                    '"block_config": [4, 6], "dropout_prob": 0.1})')
    t.add_argument("--frame", default="joint", choices=("joint", "world"),
                   help="crop axes: the joint box's own (default; a rotated pelvis gives the same crop) or the world's")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    t.add_argument("--init", help="fine-tune: start from this grading bundle's weights (and architecture)")
    t.add_argument("--long-axis", default="outline", choices=("outline", "curvature", "coarse", "planes", "segmentation"),
                   help="in-plane axis of the refined joint frame: the surface outline's, its bend's, the segmentation's, "
                        "or the line where the two joint planes meet (stablest under a turned pelvis); 'segmentation': "
                        "the segmentation's box as it is, not refined on the CT (as 0.2.0)")
    t.add_argument("--test-time-jitter", type=float, nargs=2, metavar=("SHIFT_MM", "TURN_DEG"),
                   help="grade each crop also moved by +-SHIFT_MM along and turned by +-TURN_DEG about each of its axes, "
                        "and average (a frame error of that size then hardly moves the grade)")
    t.add_argument("--consistency", type=float, default=0.0, metavar="WEIGHT",
                   help="train on two nuisance-augmented views of each joint and penalise their disagreement "
                        "(symmetric KL, this weight): grades that a softer kernel or a HU offset does not move")
    t.add_argument("--augmentation", default="stress", choices=("stress", "inplane"),
                   help="per-sample nuisances: the stress sweep's, or those plus any in-plane turn (for --long-axis curvature)")
    t.add_argument("--select", default="loss", choices=("loss", "score"),
                   help="epoch kept: lowest validation loss, or best validation accuracy + crop-level stress consistency")
    t.add_argument("--test-time-turns", type=int, default=1, choices=(1, 2, 4),
                   help="grade each crop at this many in-plane quarter turns and average (with --augmentation inplane)")
    t.add_argument("--hu-reference", action="store_true",
                   help="reference each crop's HU to its own muscle peak (cancels a scanner's HU offset)")
    t.add_argument("--pre-blur", type=float, default=0.0, metavar="MM",
                   help="blur every crop by this FWHM first (softer kernels and thicker slices then matter less)")
    t.add_argument("--name", default="sij-densenet")
    t.add_argument("--model-version", default="0.1.0")
    t.add_argument("--segmenter", help="segmentation bundle (default: the installed one)")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    t.set_defaults(func=cmd_train)

    t = sub.add_parser("train-segmenter", help="train the pelvic-bone segmentation UNet from DATA.csv with a labels column")
    t.add_argument("--data", required=True, action="append", help="DATA.csv (repeat to train on several sets)")
    t.add_argument("--init", help="continue from this segmentation bundle's weights")
    t.add_argument("--average-init", type=float, metavar="W", help="with --init: save (1-W) x init + W x trained weights")
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--model-version", default="0.1.0")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--spacing", type=float, default=4.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--rotate", type=float, default=0.0, metavar="DEG",
                   help="turn 70%% of the training samples by up to DEG degrees about each axis (labels with them): "
                        "the same pelvis turned in the scanner then gets the same bones")
    t.add_argument("--shift", type=float, default=0.0, metavar="VOX",
                   help="move every training sample by up to VOX voxels (fractions: where a resampled CT's grid falls)")
    t.set_defaults(func=cmd_train_segmenter)

    tr = sub.add_parser("train-segmenter-refine", help="train the segmenter's 2 mm second stage (sacrum and both "
                                                       "sacroiliac joints) and add it to the segmentation bundle")
    tr.add_argument("--data", required=True, action="append", help="DATA.csv with a labels column (repeatable; train rows)")
    tr.add_argument("--segmenter", required=True, help="the segmentation bundle folder (first stage; written into)")
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--cache", help="keep the prepared 2 mm boxes here (a rerun skips the preparation)")
    tr.set_defaults(func=cmd_train_segmenter_refine)

    es = sub.add_parser("evaluate-segmenter", help="Dice per bone of a segmentation bundle on DATA.csv rows with labels, "
                                                  "seen and held-out subjects apart")
    es.add_argument("--data", required=True)
    es.add_argument("--segmenter", help="segmentation bundle (default: the installed one)")
    es.add_argument("--split", default="test", help="comma-separated splits (default test)")
    es.add_argument("--limit", type=int, help="only the first N cases")
    es.add_argument("--out", help="write the per-case JSON here")
    es.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    es.set_defaults(func=cmd_evaluate_segmenter)

    e = sub.add_parser("evaluate", help="AUCs with patient-bootstrap CIs, kappas, calibration, failures of a bundle on DATA.csv",
                       description="Grade every row of DATA.csv (the test split when there is one) and write per-grade "
                                   "and per-category one-vs-rest AUCs and kappas with patient-bootstrap 95% CIs, ECE, "
                                   "Brier score and a reliability diagram, OOD flag rates, and the patient-level "
                                   "result. Cases that cannot be graded count as failures in every figure.")
    e.add_argument("--data", required=True)
    e.add_argument("--bundle", help="grading bundle (default: the installed one)")
    e.add_argument("--segmenter", help="segmentation bundle (default: the installed one)")
    e.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    e.add_argument("--by", choices=("site",), help="also report per site")
    e.add_argument("--split", default="auto", help="train, val, test, all or auto (test when present, else all)")
    e.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples (default 1000)")
    e.add_argument("--cache", metavar="DIR", help="keep each CT's raw logits and features here (shared with calibrate)")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    e.add_argument("--stress", action="store_true",
                   help="stress sweep instead: blur, 3 mm slices, 15 degree rotations, HU offset, double noise; "
                        "grade changes per condition, seen and held-out subjects apart (slow)")
    e.add_argument("--limit", type=int, help="with --stress: only the first N cases of each split "
                                             "(--split test,train compares held-out with seen subjects)")
    e.set_defaults(func=cmd_evaluate)

    jt = sub.add_parser("joint-template", help="copy a grading bundle with a mean-joint template: its joint boxes are "
                                               "then registered to it, so a turned pelvis gives the same crop",
                        description="The template is the mean of the window-normalised joint crops of the --split rows "
                                    "(default: train) in the segmentation's boxes. The copy's temperature and OOD "
                                    "statistics are removed: calibrate it afterwards.")
    jt.add_argument("bundle", help="grading bundle folder (crops in the joint frame)")
    jt.add_argument("data", nargs="+", help="DATA.csv file(s)")
    jt.add_argument("--out", required=True, help="folder for the new bundle (the same as BUNDLE rewrites it)")
    jt.add_argument("--split", default="train", help="rows used (default: train; never the held-out test rows)")
    jt.add_argument("--limit", type=int, help="only the first N rows")
    jt.add_argument("--model-version", help="the new bundle's version (default: unchanged)")
    jt.add_argument("--segmenter", help="segmentation bundle (default: the installed one)")
    jt.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    jt.add_argument("--min-step", type=float, default=1e-3, metavar="MM",
                    help="the registration stops at steps below this (default 0.001 mm; grader 0.4.0 was built "
                         "with 0.0001, about twice as slow, boxes within 0.02 mm)")
    jt.set_defaults(func=cmd_joint_template)

    cb = sub.add_parser("calibrate", help="fit the temperature and the OOD statistics of a trained bundle on DATA.csv",
                        description="Post-hoc, on any trained grading bundle: grade the --split rows of DATA.csv (one or "
                                    "more files), fit the temperature on all their joints (>= --min-joints, not all "
                                    "graded correctly) and the out-of-distribution statistics on the joints of the "
                                    "bundle's training sites (threshold: 95%% of them pass); write both into BUNDLE/"
                                    "metadata.json.")
    cb.add_argument("bundle", help="grading bundle folder (its metadata.json is rewritten)")
    cb.add_argument("data", nargs="+", help="DATA.csv file(s)")
    cb.add_argument("--split", default="val", help="rows used (default: val; 'all' for every row)")
    cb.add_argument("--min-joints", type=int, default=100)
    cb.add_argument("--ood-sites", nargs="*", help="sites whose joints define 'in distribution' "
                                                    "(default: the bundle's training sites)")
    cb.add_argument("--segmenter", help="segmentation bundle (default: the installed one)")
    cb.add_argument("--cache", metavar="DIR", help="keep each CT's raw logits and features here (shared with evaluate)")
    cb.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    cb.set_defaults(func=cmd_calibrate)

    r = sub.add_parser("report", help="case report (HTML or PDF): key images, reader and AI grades, model card",
                       description="Run the AI on PATH and write a case report: oblique coronal key images through "
                                   "each joint with and without the heatmap, the reader's grades before and after the "
                                   "AI (from the reads log, or --right/--left), AI grades and probabilities.")
    r.add_argument("path")
    r.add_argument("--out", help="FILE.html or FILE.pdf")
    r.add_argument("--dicom", metavar="DIR", help="write the reader's grades as a DICOM SR (person observer) into DIR")
    r.add_argument("--reader", default="reader", help="reader id for --dicom (default: the reads log's)")
    r.add_argument("--right", type=int, choices=range(5), metavar="0-4", help="reader's pre-AI grade, right joint")
    r.add_argument("--left", type=int, choices=range(5), metavar="0-4", help="reader's pre-AI grade, left joint")
    r.add_argument("--reads", help="reads log (default: the viewer's, $SIRAD_READS)")
    r.add_argument("--bundle", help="grading bundle (default: the installed one)")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    r.add_argument("--include-source-path", action="store_true",
                   help="name the input path in the report (default: a non-identifying sha256 reference)")
    r.set_defaults(func=cmd_report)
    _add_deidentify_parser(sub)

    st = sub.add_parser("study", help="reader studies: create, add-cases, status, export, analyse, mrmc, demo")
    ss = st.add_subparsers(dest="study_command", metavar="STUDY_COMMAND")
    c = ss.add_parser("create", help="create a study file from a protocol (YAML or JSON)")
    c.add_argument("study", help="study file (SQLite) or an SQLAlchemy URL")
    c.add_argument("--protocol", required=True)
    c.add_argument("--key", help="where to write the new coordinator key (default: outside the study folder, "
                                 "under $SIRAD_KEYS or ~/.local/share/sirad-viewer/keys)")
    c.set_defaults(func=cmd_study_create)
    c = ss.add_parser("add-cases", help="add cases (CSV: id,path,study_uid,left,right,site; or YAML) before grading starts")
    c.add_argument("study")
    c.add_argument("cases")
    c.add_argument("--key", help="the coordinator key (signs the change)")
    c.set_defaults(func=cmd_study_add_cases)
    c = ss.add_parser("status", help="progress per reader and the event log's integrity")
    c.add_argument("study")
    c.add_argument("--key", help="the coordinator key: check signatures, checkpoints and study id, not only the chain")
    c.set_defaults(func=cmd_study_status)
    c = ss.add_parser("export", help="long table: reader, case, joint, arm, pre/post-AI grade, AI grade, reference, times")
    c.add_argument("study")
    c.add_argument("--out", required=True, help="FILE.csv or FILE.json")
    c.add_argument("--key", help="the coordinator key: check signatures, checkpoints and study id, not only the chain")
    c.set_defaults(func=cmd_study_export)
    c = ss.add_parser("analyse", help="accuracy, kappa, unaided vs aided, reveal effects, MRMC; figures and report.html")
    c.add_argument("study")
    c.add_argument("--out", help="output folder (default: STUDY-analysis)")
    c.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (patients)")
    c.add_argument("--key", help="the coordinator key: check signatures, checkpoints and study id, not only the chain")
    c.set_defaults(func=cmd_study_analyse)
    c = ss.add_parser("mrmc", help="Obuchowski-Rockette MRMC on reader,treatment,case,truth,rating CSV")
    c.add_argument("ratings")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_study_mrmc)
    c = ss.add_parser("demo", help="a small phantom study with two simulated readers, analysed end to end")
    c.add_argument("out")
    c.add_argument("--cases", type=int, default=8)
    c.set_defaults(func=cmd_study_demo)
    _add_pacs_parser(sub)
    add_batch_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    # Library warnings become log records, so the loader can keep those of errors it handles quiet
    # (sirad_viewer.io.dicom.pixels.quiet_libraries) and -v shows them.
    logging.captureWarnings(True)
    if not getattr(args, "func", None):
        if args.command == "study":
            parser.parse_args(["study", "--help"])
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except SiradError as exc:
        print(f"sirad {args.command}: {exc.user_message()}", file=sys.stderr)
        return 130 if exc.code == "cancelled" else 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"sirad {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser"]
