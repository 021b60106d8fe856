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

# One process for the whole suite: the OpenVINO, ExecuTorch and ncnn runtimes load beside torch in it as they do
# in a user's `lightseg bench --backend all` (lightseg.deploy.format_openvino.core says why that once crashed).
test: venv
	$(BIN)/python -m pytest -q tests

demo: venv
	$(BIN)/python -m lightseg.demo $(if $(DATA),--data $(DATA),) $(if $(ITERS),--iters $(ITERS),)

clean:
	rm -rf $(VENV) runs/demo
