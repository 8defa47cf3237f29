#!/usr/bin/env bash
# The README's test command: a fresh venv with everything the tests need, then the whole suite.
# CPU torch first (a plain `torch` requirement would pull a multi-GB CUDA build); never torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # tests build every model and processor locally
# WordNet 3.0 for the nltk CHAIR normaliser's tests (Debian's wordnet-base; its tests skip, saying so, without it)
if [ ! -f /usr/share/wordnet/index.noun ] && [ -z "${HALLUFIX_WORDNET:-}" ] && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q wordnet-base >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 \
    && apt-get install -y -q wordnet-base >/dev/null 2>&1; } || echo "note: could not install wordnet-base"
fi
VENV="${HALLUFIX_VENV:-.venv-test}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".[test]" ./docs/examples/hallufix-example
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
