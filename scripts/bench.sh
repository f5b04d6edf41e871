#!/usr/bin/env bash
# The benchmark: starts the real stack (Firestore emulator, Novita simulator, functions-framework)
# on loopback and prints each figure beside its limit measured in the same run.
#   scripts/bench.sh [--runs N] [--check] [--profile-chains N] [--firestore-sketches N]
# Reports and exits 0; with --check, exits 1 when a goal is missed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$VENV_PYTHON" -m bench "$@"
