#!/usr/bin/env bash
# The README's test command: a fresh venv with everything the tests need, then the whole suite.
# CPU torch first (a plain `torch` requirement would pull a multi-GB CUDA build); never torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # tests build every model and processor locally
# No system packages: CHAIR's WordNet data ships with hallufix; NLTK (in the test extra) is used for its data-free
# tokenizer; the tests that need NLTK's downloadable data (punkt_tab, tagger, wordnet) skip, saying so, without it
VENV="${HALLUFIX_VENV:-.venv-test}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".[test]" ./docs/examples/hallufix-example
# lmms-eval for tests/test_lmms_eval.py, as docs/lmms-eval.md installs it on CPU: the package without its
# requirement list (that pulls torchvision, timm, wandb, opencv, ...), then what its evaluator imports
"$VENV/bin/python" -m pip install -q --no-deps "lmms-eval==0.7.3"
"$VENV/bin/python" -m pip install -q accelerate evaluate loguru sacrebleu pytz tenacity pytablewriter "filelock<4"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
