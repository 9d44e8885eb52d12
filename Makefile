# SIRAD Viewer: `make run` opens the viewer on the demo case, `make test` runs the test suite.
# Both create .venv when it is missing and install only what is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.stamp-installed
DEMO   := resources/demo/example_ct.nii.gz
# Two points along the demo CT's sacrum (LPS mm): the oblique coronal plane a reader would drag.
DEMO_AXIS := 0,-130,235,0,-75,160
OUT    ?= out/run
HEADLESS = $(if $(DISPLAY)$(WAYLAND_DISPLAY),,xvfb-run -a -s "-screen 0 1600x1000x24")

# System packages Qt (xcb) and VTK need under Xvfb; `ldd` of PyQt6's libqxcb.so names them.
APT_PACKAGES := xvfb xauth libgl1-mesa-dri libegl1 libgl1 libxkbcommon-x11-0 libxcb-cursor0 \
                libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 \
                libxcb-xinerama0 libxcb-randr0 libxcb-xkb1 libfontconfig1 libdbus-1-3 postgresql \
                orthanc orthanc-dicomweb dicom3tools

.PHONY: run test bench fuzz pacs system venv clean help

help:
	@echo "make run    open the viewer on the demo case (headless: screenshots + series report into $(OUT))"
	@echo "make test   run the whole test suite"
	@echo "make bench  run the benchmarks (writes benchmarks/results.json)"
	@echo "make pacs   start a local Orthanc PACS with the demo CT and phantoms (Ctrl-C stops it)"
	@echo "make fuzz   fuzz the loaders with mutated real files (FUZZ_SECONDS=600, FUZZ_SEED=12)"

# Install missing system packages when running as root with apt-get; otherwise only report.
system:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    case "$$missing" in *orthanc*) (service orthanc stop; update-rc.d orthanc disable) >/dev/null 2>&1 || true;; esac; \
	  else \
	    echo "note: missing system packages:$$missing (install them with apt-get as root)"; \
	  fi; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the local CPU build, so the package's "torch" requirement is already met
# and pip never pulls the CUDA wheels.
$(STAMP): $(PY) setup.cfg pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: system venv
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
	  $(VENV)/bin/sirad-viewer $(DEMO) --sacral-axis=$(DEMO_AXIS); \
	else \
	  mkdir -p $(OUT); \
	  echo "no display: rendering off-screen into $(abspath $(OUT))"; \
	  for layout in sij 2x2; do \
	    $(HEADLESS) $(VENV)/bin/sirad-viewer $(DEMO) --sacral-axis=$(DEMO_AXIS) --layout $$layout \
	      --screenshot $(OUT)/viewer-$$layout.png || exit 1; \
	  done; \
	  $(VENV)/bin/sirad info $(DEMO) > $(OUT)/series-report.txt; \
	  SIRAD_READS=$(abspath $(OUT))/reads.jsonl $(HEADLESS) $(VENV)/bin/sirad-viewer $(DEMO) \
	    --sacral-axis=$(DEMO_AXIS) --grades 1,1 \
	    --screenshot $(OUT)/viewer-ai-revealed.png --report $(OUT)/case-report.html || exit 1; \
	  $(VENV)/bin/sirad grade $(DEMO) --json $(OUT)/ai-report.json --heatmaps $(OUT)/heatmaps \
	    > $(OUT)/ai-report.txt || exit 1; \
	  cat $(OUT)/ai-report.txt; \
	  echo "screenshots (before the reader's lock, and after it with the AI revealed), the series report,"; \
	  echo "the AI report (ai-report.txt/.json, heatmaps/) and the case report are in $(abspath $(OUT))"; \
	fi

test: system venv
	$(PY) -m pytest -q

pacs: system venv
	$(PY) tools/pacs_demo.py

# Seeded mutation fuzzing of the loaders (tools/fuzz.py); counts by outcome, exit 1 on any bug.
FUZZ_SECONDS ?= 600
FUZZ_SEED ?= 12
fuzz: venv
	nice -n 10 $(PY) tools/fuzz.py --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED)

bench: system venv
	$(HEADLESS) $(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache
