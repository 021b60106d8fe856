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

# pytest-xdist runs the suite in one worker per core (one torch thread each: tests/conftest.py); on the 2-core
# CI machine the suite took 4 min 48 s this way (quiet Intel Xeon, 2026-12-02). Each worker loads the OpenVINO,
# ExecuTorch and ncnn runtimes beside torch as a user's `lightseg bench --backend all` does
# (lightseg.deploy.format_openvino.core says why that once crashed).
test: venv
	$(BIN)/python -m pytest -q -n auto tests

demo: venv
	$(BIN)/python -m lightseg.demo $(if $(DATA),--data $(DATA),) $(if $(ITERS),--iters $(ITERS),)

clean:
	rm -rf $(VENV) runs/demo
