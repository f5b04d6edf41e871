#!/usr/bin/env bash
# The whole machine on this computer: a sketch from a prompt to a video, shown as it progresses.
#   scripts/run-local.sh "a walrus giving a TED talk about spoons"
#   scripts/run-local.sh --serve        # keep the stack up for a frontend, print its URLs
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
if [ "${1:-}" = "--serve" ]; then
  exec "$VENV_PYTHON" -m devstack serve
fi
[ $# -ge 1 ] || { echo "usage: scripts/run-local.sh \"your absurd prompt\" | --serve" >&2; exit 2; }
exec "$VENV_PYTHON" -m devstack run "$@"
