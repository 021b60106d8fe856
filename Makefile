PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?=
ITERS ?=
# torch is installed first from the constraints file: resolving a bare `torch` pulls the CUDA build.
$(BIN)/lightseg: pyproject.toml setup.py constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test,deploy,plot]'
	touch $(BIN)/lightseg

.PHONY: venv test demo clean
venv: $(BIN)/lightseg

# The test files that load the OpenVINO, ExecuTorch and ncnn runtimes run after the rest, each in a pytest process
# of its own. One OpenVINO crash is fixed (lightseg.deploy.format_openvino.core: its signal stack), but a second
# native fault remains: under pytest-xdist, or with one torch thread, the fault tests (tests/test_faults*.py)
# crashed a later test with SIGSEGV, in Python code or the garbage collector, in most runs; in one process with
# two threads they pass. Until it is found, the suite runs in one process.
DEPLOY_RUNTIME_TESTS := tests/test_bench.py tests/test_deploy_eval.py tests/test_deploy_formats.py tests/test_deploy_auto.py
test: venv
	$(BIN)/python -m pytest -q tests $(addprefix --ignore=,$(DEPLOY_RUNTIME_TESTS))
	for t in $(DEPLOY_RUNTIME_TESTS); do $(BIN)/python -m pytest -q $$t || exit 1; done

demo: venv
	$(BIN)/python -m lightseg.demo $(if $(DATA),--data $(DATA),) $(if $(ITERS),--iters $(ITERS),)

clean:
	rm -rf $(VENV) runs/demo
