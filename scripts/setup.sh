#!/usr/bin/env bash
# Create .venv (once) and install itm into it. `scripts/setup.sh test` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
    .venv/bin/python -m pip install -q -e '.[test]'
    # The reference for the optimizer-parity test. Its full dependency set (tensorflow-text, opencv, ...)
    # is not needed for that, so it goes in without dependencies; the test extra holds what it imports.
    .venv/bin/python -m pip install -q --no-deps tf-models-official==2.20.0
else
    .venv/bin/python -m pip install -q -e .
fi
echo "itm is installed in .venv"
