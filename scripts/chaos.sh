#!/usr/bin/env bash
# The chaos run: the local stack, sketches sent by guests while every fault happens at once (kills,
# emulator restarts, Novita's errors, lost answers, webhooks dropped, duplicated and late, a slow
# media host, expired links, the balance out), then an audit of every sketch against what Novita
# was paid. Ends with one `chaos: ...` line; exits non-zero when the audit fails (docs/chaos.md).
#   scripts/chaos.sh [--sketches N] [--seed S] [--personality guide|reference]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$VENV_PYTHON" -m chaos "$@"
