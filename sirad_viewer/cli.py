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

    if args.vary:
        spec = random_spec(args.seed, left_grade=args.left, right_grade=args.right, site=args.site,
                           matrix=args.matrix)
    else:
        spec = PhantomSpec(left_grade=args.left, right_grade=args.right, seed=args.seed,
                           matrix=args.matrix or 256, slice_thickness_mm=args.thickness,
                           slice_spacing_mm=args.spacing or args.thickness, site=args.site)
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

    path = make_dataset(args.out, args.n, site=args.site, seed=args.seed, matrix=args.matrix, fmt=args.format,
                        workers=args.workers, progress=progress)
    print(f"dataset written: {path} (synthetic phantoms with planted fake identities; not patient data)")
    return 0


# --- study ---------------------------------------------------------------------------------

def _open_store(path: str):
    from sirad_viewer.study.protocol import StudyError
    from sirad_viewer.study.store import StudyStore

    if "://" not in path and not Path(path).exists():
        raise StudyError("does not exist (create it with 'sirad study create')", path=path, code="not_found")
    return StudyStore(path)


def cmd_study_create(args: argparse.Namespace) -> int:
    from sirad_viewer.study.protocol import Protocol
    from sirad_viewer.study.store import StudyStore

    protocol = Protocol.load(args.protocol)
    store = StudyStore.create(args.study, protocol)
    print(f"created {args.study}: '{protocol.name}', {protocol.design}, {len(protocol.readers)} reader(s), "
          f"{len(protocol.cases)} case(s), protocol hash {protocol.hash[:16]}")
    store.close()
    return 0


def _read_cases(path: str) -> list:
    import csv

    from sirad_viewer.study.protocol import Case, StudyError

    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        data = yaml.safe_load(p.read_text())
        items = data.get("cases", data) if isinstance(data, dict) else data
        return [Case(**{**c, "id": str(c["id"])}) for c in items]
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
    store = _open_store(args.study)
    protocol = store.protocol
    new = _read_cases(args.cases)
    protocol.cases.extend(new)
    store.update_protocol(protocol)
    print(f"added {len(new)} case(s); {len(protocol.cases)} in total; protocol hash {protocol.hash[:16]}")
    return 0


def cmd_study_status(args: argparse.Namespace) -> int:
    from sirad_viewer.study.session import ReaderSession

    store = _open_store(args.study)
    p = store.protocol
    ok, msg = store.verify()
    print(f"{p.name} ({p.design}), protocol {p.hash[:16]}{' (frozen)' if store.frozen else ''}")
    print(f"event log: {msg}" + ("" if ok else "  <-- TAMPERED"))
    for r in p.readers:
        s = ReaderSession(store, r.id)
        done, total = s.progress()
        cur = s.current()
        print(f"  {r.id:<12} {done}/{total} read" + (f", next: {cur['case']} (session {cur['session']}, {cur['arm']})" if cur else ", finished"))
    return 0 if ok else 2


def cmd_study_export(args: argparse.Namespace) -> int:
    from sirad_viewer.study.analysis import write_export

    out = write_export(_open_store(args.study), args.out)
    print(f"written {out}")
    return 0


def cmd_study_analyse(args: argparse.Namespace) -> int:
    from sirad_viewer.study.analysis import analyse

    out = args.out or str(Path(args.study).with_suffix("")) + "-analysis"
    res = analyse(_open_store(args.study), out, n_boot=args.bootstrap)
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
    except (OSError, ValueError) as exc:
        print(f"sirad study mrmc: {args.ratings}: {exc}", file=sys.stderr)
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

    try:
        result = scan(args.path)
        volume = load_series(result.series[result.chosen])
        grader = Grader(find_bundle("grading", args.bundle), find_bundle("segmentation", args.segmenter),
                        device=args.device)
        res = grader(volume, heatmaps=bool(args.heatmaps),
                     progress=(lambda s, f: print(f"  {s}...", file=sys.stderr)) if args.verbose else None)
    except SiradError as exc:
        if args.json:
            Path(args.json).write_text(json.dumps({"error": exc.to_dict()}, indent=2) + "\n")
        raise
    d = res.to_dict()
    d["source"] = str(args.path)
    if args.heatmaps:
        paths = write_heatmaps(res, volume, args.heatmaps)
        d["heatmaps"] = {p.stem.split("_")[-1].split(".")[0]: str(p) for p in paths}
    if args.json:
        if args.json == "-":
            _print_json(d)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(d, indent=2) + "\n")
    if args.json != "-":
        print(_grade_text(d))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sirad_viewer.ai.pipeline import find_bundle
    from sirad_viewer.ai.train import train_grader

    b = train_grader(args.data, args.out, segmenter=find_bundle("segmentation", args.segmenter), epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, patience=args.patience, seed=args.seed, resume=args.resume,
                     name=args.name, version=args.model_version, device=args.device, spacing_mm=args.spacing,
                     size=args.size)
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

    b = train_segmenter(args.data, args.out, steps=args.steps, spacing_mm=args.spacing, seed=args.seed, progress=prog)
    print(f"wrote {b.path}")
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
    grader = Grader(find_bundle("grading", args.bundle), device=args.device)
    res = grader(volume, heatmaps=True)
    reading = latest_reading(args.reads or default_log_path(), str(Path(args.path).resolve()))
    if args.right is not None or args.left is not None:
        reading = {"case": str(args.path), "pre_ai": {"right": args.right, "left": args.left, "at": None}, "post_ai": None}
    out = write_report(args.out, volume, res, reading, grader.bundle.metadata)
    print(f"report written to {out}" + ("" if reading else " (no reader grades found for this case)"))
    return 0


# --- parser ----------------------------------------------------------------------------------

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
    ph.add_argument("--thickness", type=float, default=2.0, help="slice thickness in mm (default 2)")
    ph.add_argument("--spacing", type=float, default=None, help="slice spacing in mm (default: thickness)")
    ph.add_argument("--vary", action="store_true",
                    help="seeded variation of size, pose, table position, slice geometry, noise and blur")
    ph.add_argument("--site", default="phantom-A", help="scanner-like profile with --vary (phantom-A/B/C)")
    ph.set_defaults(func=cmd_phantom)

    pd = sub.add_parser("phantom-dataset", help="write a labelled phantom set and its DATA.csv",
                        description="Write N varied phantoms with balanced grades and DATA.csv (image, left, right, "
                                    "site, split, labels, truth) for 'sirad train' and 'sirad evaluate'. --site "
                                    "changes scanner-like properties to mimic another centre.")
    pd.add_argument("--n", type=int, required=True)
    pd.add_argument("--out", required=True)
    pd.add_argument("--site", default="phantom-A", help="phantom-A, phantom-B or phantom-C")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--matrix", type=int, default=128, help="in-plane matrix (default 128; the FOV stays 320-420 mm)")
    pd.add_argument("--format", choices=("nifti", "dicom"), default="nifti")
    pd.add_argument("--workers", type=int, default=None, help="processes (default: the CPU count)")
    pd.set_defaults(func=cmd_phantom_dataset)

    g = sub.add_parser("grade", help="grade both sacroiliac joints of a CT with the AI model",
                       description="Segment the pelvis, find both sacroiliac joints, grade each 0-4 (modified New York) "
                                   "with calibrated probabilities, the 3-category result and the patient-level rule. "
                                   "The demo models are phantom-trained: not for clinical use.")
    g.add_argument("path", help="CT: file, DICOM folder or .zip")
    g.add_argument("--json", metavar="OUT", help="write the JSON result to OUT ('-' for standard output)")
    g.add_argument("--heatmaps", metavar="DIR", help="write one Grad-CAM NIfTI per joint on the CT grid")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    g.add_argument("--bundle", help="grading bundle folder (default: the installed one)")
    g.add_argument("--segmenter", help="segmentation bundle folder (default: the installed one)")
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
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    t.add_argument("--name", default="sij-densenet")
    t.add_argument("--model-version", default="0.1.0")
    t.add_argument("--segmenter", help="segmentation bundle (default: the installed one)")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    t.set_defaults(func=cmd_train)

    t = sub.add_parser("train-segmenter", help="train the pelvic-bone segmentation UNet from DATA.csv with a labels column")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--spacing", type=float, default=4.0)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train_segmenter)

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
    e.set_defaults(func=cmd_evaluate)

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
    r.add_argument("--out", required=True, help="FILE.html or FILE.pdf")
    r.add_argument("--right", type=int, choices=range(5), metavar="0-4", help="reader's pre-AI grade, right joint")
    r.add_argument("--left", type=int, choices=range(5), metavar="0-4", help="reader's pre-AI grade, left joint")
    r.add_argument("--reads", help="reads log (default: the viewer's, $SIRAD_READS)")
    r.add_argument("--bundle", help="grading bundle (default: the installed one)")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    r.set_defaults(func=cmd_report)

    st = sub.add_parser("study", help="reader studies: create, add-cases, status, export, analyse, mrmc, demo")
    ss = st.add_subparsers(dest="study_command", metavar="STUDY_COMMAND")
    c = ss.add_parser("create", help="create a study file from a protocol (YAML or JSON)")
    c.add_argument("study", help="study file (SQLite) or an SQLAlchemy URL")
    c.add_argument("--protocol", required=True)
    c.set_defaults(func=cmd_study_create)
    c = ss.add_parser("add-cases", help="add cases (CSV: id,path,study_uid,left,right,site; or YAML) before grading starts")
    c.add_argument("study")
    c.add_argument("cases")
    c.set_defaults(func=cmd_study_add_cases)
    c = ss.add_parser("status", help="progress per reader and the event log's integrity")
    c.add_argument("study")
    c.set_defaults(func=cmd_study_status)
    c = ss.add_parser("export", help="long table: reader, case, joint, arm, pre/post-AI grade, AI grade, reference, times")
    c.add_argument("study")
    c.add_argument("--out", required=True, help="FILE.csv or FILE.json")
    c.set_defaults(func=cmd_study_export)
    c = ss.add_parser("analyse", help="accuracy, kappa, unaided vs aided, reveal effects, MRMC; figures and report.html")
    c.add_argument("study")
    c.add_argument("--out", help="output folder (default: STUDY-analysis)")
    c.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (patients)")
    c.set_defaults(func=cmd_study_analyse)
    c = ss.add_parser("mrmc", help="Obuchowski-Rockette MRMC on reader,treatment,case,truth,rating CSV")
    c.add_argument("ratings")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_study_mrmc)
    c = ss.add_parser("demo", help="a small phantom study with two simulated readers, analysed end to end")
    c.add_argument("out")
    c.add_argument("--cases", type=int, default=8)
    c.set_defaults(func=cmd_study_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
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
