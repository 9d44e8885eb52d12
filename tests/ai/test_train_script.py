"""tools/train_demo_models.sh: the commands each recipe runs (DRY_RUN prints them; issue #10 item 6)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "train_demo_models.sh"


def _commands(tmp_path, **env) -> list[str]:
    # SIRAD and PYTHON are 'false': should the dry run ever run a command, it fails at once instead of training
    e = {**os.environ, "DRY_RUN": "1", "SIRAD": "false", "PYTHON": "false", **env}
    for k in ("RECIPE", "N_MORE", "SEG_STEPS2", "SEG_REFINE_STEPS", "SEG_ROTATE_STEPS", "GRADER_FT", "TEMPLATE",
              "FIRST_FRAME", "BLUR_EPOCHS", "MIN_STEP", "EPOCHS", "PATIENCE", "FT_EPOCHS"):
        if k not in env:
            e.pop(k, None)
    p = subprocess.run(["sh", str(SCRIPT), str(tmp_path / "w")], cwd=ROOT, env=e, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return [ln[2:] for ln in p.stderr.splitlines() if ln.startswith("+ ")]


def _steps(cmd: str, flag: str = "--steps") -> int:
    words = cmd.split()
    return int(words[words.index(flag) + 1])


def test_quick_recipe_is_one_pass_on_180_phantoms(tmp_path):
    cmds = _commands(tmp_path, RECIPE="quick")
    data = [c for c in cmds if " phantom-dataset " in c]
    assert len(data) == 2 and "--n 180 " in data[0] and "--n 24 " in data[1]  # no 240 more phantoms
    seg = [c for c in cmds if " train-segmenter " in c]
    assert [_steps(c) for c in seg] == [800, 1200] and "--rotate 15" in seg[1] and "--init" in seg[1]
    assert "--average-init" not in " ".join(seg)
    refine = [c for c in cmds if " train-segmenter-refine " in c]
    assert len(refine) == 1 and _steps(refine[0]) == 400
    # the refine stage runs on the first stage before the turned continuation, which keeps it
    assert cmds.index(refine[0]) < cmds.index(seg[1])
    train = [c for c in cmds if c.split()[1] == "train"]
    assert len(train) == 4 and "--consistency 1.0 --hu-reference" in train[1]
    assert "data-ft.csv" not in " ".join(cmds)  # fine-tuned on the same 180 phantoms
    assert any("test_time_jitter" in c for c in cmds)
    # TEMPLATE=1 (the default, grader 0.4.0's path): from the train split of the data the grader was trained on,
    # after its fine-tuning, written into the bundle that is then evaluated and calibrated
    tpl = [c for c in cmds if " joint-template " in c]
    assert len(tpl) == 1 and "--split train" in tpl[0] and "data-more" not in tpl[0]
    assert cmds.index(train[1]) < cmds.index(tpl[0]) < cmds.index(next(c for c in cmds if " evaluate " in c))
    assert tpl[0].split("--out ")[1].split()[0] == train[1].split("--init ")[1].split()[0]  # the bundle evaluated
    # then fine-tuned again on crops cut along the registered boxes, starting from the bundle with the template,
    # and the template travels into the bundle that is evaluated
    reg, blur = train[2:]
    assert cmds.index(tpl[0]) < cmds.index(reg) < cmds.index(blur)
    assert reg.split("--init ")[1].split()[0] == tpl[0].split("--out ")[1].split()[0]
    assert "--consistency 1.0 --hu-reference" in reg and "--lr 1e-4" in reg and "--pre-blur" not in reg
    # then with every crop blurred 1.5 mm first, from the registered fine-tuning, on the same cached crops
    assert blur.split("--init ")[1].split()[0] == reg.split("--out ")[1].split()[0]
    assert "--pre-blur 1.5" in blur and "--epochs 15" in blur
    out = blur.split("--out ")[1].split()[0]
    assert f"cp -al {reg.split('--out ')[1].split()[0]}/cache {out}/cache" in cmds
    assert any(c.startswith("cp ") and f"{out}/template.safetensors" in c for c in cmds[cmds.index(blur):])
    assert any("test_time_jitter" in c and f"{out}/metadata.json" in c for c in cmds)
    assert "calibrate_demo.sh" in cmds[-1]
    # a rebuild does not carry the shipped bundles' versions
    assert "--model-version 0.5.0-rebuilt" in seg[1] and all("--model-version 0.3.0-rebuilt" in c for c in train[:3])
    assert "--model-version 0.4.0-rebuilt" in blur
    # TEMPLATE=0: 0.3.0's path, no template and no further fine-tuning
    cmds = _commands(tmp_path, RECIPE="quick", TEMPLATE="0")
    assert not any(" joint-template " in c for c in cmds) and len([c for c in cmds if c.split()[1] == "train"]) == 2
    assert any(c.startswith("cp ") and "grader-ft/model.safetensors" in c for c in cmds)


def test_full_recipe_is_the_path_the_shipped_bundles_took(tmp_path):
    cmds = _commands(tmp_path, RECIPE="full")
    assert any("--n 240 " in c and "--seed 3" in c for c in cmds if " phantom-dataset " in c)
    seg = [c for c in cmds if " train-segmenter " in c]
    assert [_steps(c) for c in seg] == [800, 600, 2000] and "--average-init 0.5" in seg[1]
    assert "data-more/DATA.csv" in seg[2]
    assert _steps(next(c for c in cmds if " train-segmenter-refine " in c)) == 1000
    assert any("join_data_csv.py" in c for c in cmds)
    tpl = next(c for c in cmds if " joint-template " in c)
    assert "data/DATA.csv" in tpl and "data-more/DATA.csv" in tpl  # the mean of all 420 phantoms' training joints


def test_hour_recipe_has_one_registered_fine_tuning_on_a_grader_that_reads_its_crops(tmp_path):
    cmds = _commands(tmp_path, RECIPE="hour")
    # the default: about an hour on two cores (measured 63.9 min)
    assert cmds == [c.replace(str(tmp_path / "d"), str(tmp_path)) for c in _commands(tmp_path / "d")]
    data = [c for c in cmds if " phantom-dataset " in c]
    assert "--n 180 " in data[0] and any("--n 160 " in c and "--seed 3" in c for c in data)
    seg = [c for c in cmds if " train-segmenter " in c]
    assert [_steps(c) for c in seg] == [800, 1200] and "--rotate 15" in seg[1] and "data-more/DATA.csv" in seg[1]
    assert _steps(next(c for c in cmds if " train-segmenter-refine " in c)) == 600
    train = [c for c in cmds if c.split()[1] == "train"]
    assert len(train) == 2  # the first grader and one fine-tuning: no unregistered one, no separate blur stage
    first, reg = train
    # the first grader already reads what the registered fine-tuning starts from, so the template built on it
    # is the one the full recipe builds on its fine-tuned grader (the segmentation's boxes)
    assert "--long-axis segmentation --hu-reference --pre-blur 1.5" in first and "--epochs 40 --patience 10" in first
    tpl = next(c for c in cmds if " joint-template " in c)
    assert tpl.split()[2] == first.split("--out ")[1].split()[0] and "--min-step 1e-2" in tpl
    assert "data/DATA.csv" in tpl and "data-more/DATA.csv" in tpl and "--split train" in tpl
    assert reg.split("--init ")[1].split()[0] == tpl.split("--out ")[1].split()[0] and "data-ft.csv" in reg
    assert "--consistency 1.0 --hu-reference" in reg and "--pre-blur 1.5" in reg and "--lr 1e-4" in reg
    assert "--model-version 0.4.0-rebuilt" in reg
    out = reg.split("--out ")[1].split()[0]
    assert any("test_time_jitter" in c and f"{out}/metadata.json" in c for c in cmds)
    assert any(c.startswith("cp ") and f"{out}/template.safetensors" in c for c in cmds)
    assert not any("grader-blur" in c for c in cmds)
    assert "calibrate_demo.sh" in cmds[-1]
    # the full recipe's first grader is unchanged by the option
    first_full = [c for c in _commands(tmp_path / "f", RECIPE="full") if c.split()[1] == "train"][0]
    assert "--long-axis" not in first_full and "--pre-blur" not in first_full


def test_an_unknown_first_frame_is_refused(tmp_path):
    p = subprocess.run(["sh", str(SCRIPT), str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "FIRST_FRAME": "outline", "SIRAD": "false", "PYTHON": "false"}, timeout=60)
    assert p.returncode == 2 and "FIRST_FRAME must be refined or segmentation" in p.stderr
    assert not (tmp_path / "w").exists()


def test_a_variable_set_by_hand_wins_over_the_recipe(tmp_path):
    cmds = _commands(tmp_path, RECIPE="quick", SEG_ROTATE_STEPS="0", SEG_REFINE_STEPS="5")
    assert [_steps(c) for c in cmds if " train-segmenter " in c] == [800]
    assert _steps(next(c for c in cmds if " train-segmenter-refine " in c)) == 5


def test_unknown_recipe_is_refused(tmp_path):
    p = subprocess.run(["sh", str(SCRIPT), str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "RECIPE": "fastest", "SIRAD": "false", "PYTHON": "false"}, timeout=60)
    assert p.returncode == 2 and "RECIPE must be full, quick or hour" in p.stderr
    assert not (tmp_path / "w").exists()  # refused before anything is written


@pytest.mark.parametrize("recipe", ["full", "quick", "hour"])
def test_nothing_runs_in_a_dry_run(tmp_path, recipe):
    _commands(tmp_path, RECIPE=recipe)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["timings.txt"]


def test_a_template_without_the_first_fine_tuning_is_refused(tmp_path):
    # measured: the template then comes from the first grader's refined frames, and every registration is slower
    p = subprocess.run(["sh", str(SCRIPT), str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "RECIPE": "full", "GRADER_FT": "0", "TEMPLATE": "1", "SIRAD": "false",
                            "PYTHON": "false"},
                       timeout=60)
    assert p.returncode == 2 and "GRADER_FT=0 with TEMPLATE=1 is refused" in p.stderr
    assert not (tmp_path / "w").exists()
    # the full recipe and 0.3.0's path still run
    assert any(" joint-template " in c for c in _commands(tmp_path / "a", RECIPE="full"))
    assert not any(" joint-template " in c
                   for c in _commands(tmp_path / "b", RECIPE="full", GRADER_FT="0", TEMPLATE="0"))
    # allowed when the first grader already reads the segmentation's boxes (RECIPE=hour does so)
    assert any(" joint-template " in c for c in _commands(tmp_path / "c", RECIPE="full", GRADER_FT="0",
                                                               FIRST_FRAME="segmentation"))
