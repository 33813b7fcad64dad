# From a fresh clone, one command each (README): `make bench` (the main job: the benchmark runner's
# default sweep) and `make test`; also `make demo`. Each creates the virtual environment and builds
# the extension when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: build demo test speed bench bench-pytest gpu-check asan wheel-check lint format clean

# The venv sees this checkout through a .pth file (what an editable install does), so that the
# extension is built once, in place and incrementally, by `make build` rather than again by pip.
$(INSTALLED): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/rnnkern-checkout.pth"
	touch $@

# Incremental rebuild of rnnkern._C (ninja) after editing csrc/.
build: $(INSTALLED)
	$(PY) setup.py -q build_ext --inplace

demo: build
	$(PY) examples/sine_to_cosine.py --plot sine_to_cosine.png

test: build
	$(PY) -m pytest -q

# The CPU speed table: ratios against torch.nn.RNN measured side by side.
speed: build
	$(PY) -m benchmarks.speed_table --runs 3

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $$(git ls-files --cached --others --exclude-standard 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh')

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $$(git ls-files --cached --others --exclude-standard 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh')

clean:
	rm -rf build rnnkern/_C*.so rnnkern/_testing*.so *.egg-info

# The main job: the benchmark runner's default sweep (1-2 minutes on 2 cores); results in bench-out/.
bench: build
	$(PY) -m benchmarks.run

# On a machine with an NVIDIA GPU, with its own python3 and nothing installed (DEVELOPERS.md): build,
# every test with the CUDA kernels on, and the GPU benchmark; results in benchmarks/results/cuda/.
gpu-check:
	tools/gpu_check.sh

# The C++ under AddressSanitizer, with the fuzz, property and error tests (CI runs it too).
asan: $(INSTALLED)
	PY=$(PY) tools/asan_check.sh

# A wheel built, installed with no compiler, and run outside the source tree (CI runs it too).
wheel-check: $(INSTALLED)
	PY=$(PY) tools/wheel_check.sh

# The pytest-benchmark suite (not part of `make test`).
bench-pytest: build
	$(PY) -m pytest benchmarks --benchmark-only
