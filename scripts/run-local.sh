#!/usr/bin/env bash
# The whole machine on this computer: a sketch from a prompt to a video, shown as it progresses.
#   scripts/run-local.sh "a walrus giving a TED talk about spoons"
#   scripts/run-local.sh --personality reference "a walrus ..."   # Novita as its public reference says
#   scripts/run-local.sh --serve [--personality reference]          # keep the stack up; one JSON line
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
options=()
command=(run)
prompt=()
while [ $# -gt 0 ]; do
  case $1 in
    --serve) command=(serve); shift ;;
    --personality) options+=(--personality "${2:?--personality needs guide or reference}"); shift 2 ;;
    *) prompt+=("$1"); shift ;;
  esac
done
if [ "${command[0]}" = run ] && [ ${#prompt[@]} -ne 1 ]; then
  echo 'usage: scripts/run-local.sh [--personality guide|reference] "your absurd prompt" | --serve' >&2
  exit 2
fi
exec "$VENV_PYTHON" -m devstack "${options[@]}" "${command[@]}" "${prompt[@]}"
