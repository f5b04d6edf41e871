#!/usr/bin/env bash
# The benchmark: starts the real stack on loopback (the Firestore, Pub/Sub and Cloud Storage
# emulators, the Novita simulator, a media host, the functions under functions-framework, with
# novita_webhook as its two doors) and prints each figure beside its limit measured in the same run.
#   scripts/bench.sh [--runs N] [--check] [--only SECTION,...] [--skip SECTION,...] [--help]
# Sections: cold delivery chain load copy e2e firestore backlog soak hostile profile (all by default).
# Reports and exits 0; with --check, exits 1 when a goal is missed. Logs and traces: out/bench/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$VENV_PYTHON" -m bench "$@"
