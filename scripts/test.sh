#!/usr/bin/env bash
# The tests: sets the machine up, then runs pytest. Extra arguments go to pytest.
#   scripts/test.sh            every test, against the real emulators, the Novita simulator and the
#                              functions under functions-framework; test files run on WORKERS (3)
#                              workers at once (they mostly wait), sharing the emulators
#   scripts/test.sh --fast     the tests that need no emulator, simulator or function process
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
if [ "${1:-}" = "--fast" ]; then
  shift
  selection=(-m "not stack")
else
  selection=(-n "${WORKERS:-3}" --dist loadfile)
fi
set +e
"$VENV_PYTHON" -m pytest "${selection[@]}" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$status"
