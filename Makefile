# segc: `make demo` and `make test` each set up .venv on first use, then run.
# torch is installed first and pinned: a looser requirement on a machine without torch
# would pull several GB of CUDA wheels (the export extra leaves torch unpinned on purpose).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.segc-installed
TORCH  := torch==2.13.0
DEMO   := build/demo

.PHONY: setup lint test demo bench bench-floor thirdparty clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[export,dev,data]'
	@touch $(STAMP)

setup: $(STAMP)

# mypy cannot follow the editable install's import hook, and segc's sources are not laid out as
# packages (compiler/ is segc, passes/ is segc.passes, ...): $(TYPECHECK)/segc is rebuilt as a
# tree of symlinks in the installed layout on every run, so new modules are checked at once.
# mypy names files by that tree: build/typecheck/segc/X.py is compiler/X.py, .../segc/passes/X.py
# is passes/X.py. Cold about 30 s (2 cores), then about 3 s from build/mypy_cache.
# Config: [tool.ruff] and [tool.mypy] in pyproject.toml.
TYPECHECK := build/typecheck

lint: $(STAMP)
	$(BIN)/ruff check .
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/segc && ln -s $(CURDIR)/compiler/*.py $(TYPECHECK)/segc/ && \
	  for d in passes targets models; do ln -s $(CURDIR)/$$d $(TYPECHECK)/segc/$$d; done
	MYPYPATH=$(TYPECHECK) $(BIN)/python -m mypy -p segc

test: lint
	$(BIN)/python -m pytest -p no:cacheprovider --durations=15

demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/segc export dbnet_r50 -o $(DEMO)/dbnet_r50.onnx --force
	$(BIN)/segc inspect $(DEMO)/dbnet_r50.onnx --target ascend
	$(BIN)/segc compile $(DEMO)/dbnet_r50.onnx --target ascend -o $(DEMO)/ascend --force
	$(BIN)/segc compile $(DEMO)/dbnet_r50.onnx --target tensorrt -o $(DEMO)/tensorrt --force
	@echo
	@echo "demo artefacts: $(DEMO)/ascend and $(DEMO)/tensorrt (build.sh, report.md, report.json, the compiled .onnx)"

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py --out build/bench
	$(BIN)/python bench/big_model.py --out build/bench
	$(BIN)/python bench/compile_floor.py --out build/bench

# the compile-time floor alone: segc against load+save and onnx-simplifier, side by side, medians of 3
bench-floor: $(STAMP)
	$(BIN)/python bench/compile_floor.py --out build/bench

# the third-party acceptance set as a table (the same cells tests/thirdparty asserts), past failures
thirdparty: $(STAMP)
	$(BIN)/python bench/thirdparty_matrix.py --out build/thirdparty

clean:
	rm -rf build .pytest_cache
