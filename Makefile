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

# The tests that run exported models in OpenVINO, ExecuTorch and ncnn one after another go in processes of
# their own: after the rest of the suite in one process, the third runtime's eval crashed with SIGSEGV (in
# CI runs; not in those files alone). Each file alone passes.
DEPLOY_RUNTIME_TESTS := tests/test_deploy_eval.py tests/test_deploy_formats.py tests/test_deploy_auto.py
test: venv
	$(BIN)/python -m pytest -q tests $(addprefix --ignore=,$(DEPLOY_RUNTIME_TESTS))
	for t in $(DEPLOY_RUNTIME_TESTS); do $(BIN)/python -m pytest -q $$t || exit 1; done

demo: venv
	$(BIN)/python -m lightseg.demo $(if $(DATA),--data $(DATA),) $(if $(ITERS),--iters $(ITERS),)

clean:
	rm -rf $(VENV) runs/demo
