# Sourced by the scripts here: make sure .venv (or $MTLSGW_VENV) holds mtlsgw as installed by pip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=${MTLSGW_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip setuptools wheel
fi
# Not editable: the tests run the installed package, as users do.
"$venv/bin/pip" install -q --upgrade ".[test]" ./examples/mtlsgw-path-authorizer
