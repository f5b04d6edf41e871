#!/usr/bin/env bash
# Prepares a fresh machine for the local run and the tests; safe to run again.
# Sourced by run-local.sh, test.sh and bench.sh: leaves VENV_PYTHON set.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
VENV_PYTHON="$VENV/bin/python"
export VENV_PYTHON

need() { command -v "$1" >/dev/null 2>&1; }

need python3 || { echo "setup: python3 (3.11 or newer) is required" >&2; exit 1; }
if ! need java; then
  echo "setup: installing Java 17 for the Firestore and Pub/Sub emulators" >&2
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

if ! need shellcheck; then
  # deploy.sh is checked by the tests; without shellcheck that one test is skipped.
  echo "setup: installing shellcheck" >&2
  { apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null; } || echo "setup: shellcheck not installed" >&2
fi

if [ ! -x /usr/bin/chromium ]; then
  # The playground's browser test drives Debian's Chromium through Playwright, which downloads no
  # browser of its own here; without Chromium that test fails and says why.
  echo "setup: installing Chromium for the playground's browser test" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
    echo "setup: chromium not installed; tests/test_playground.py will fail" >&2
fi

# Google's Firestore and Pub/Sub emulators come with the Cloud SDK's Debian packages.
sdk_root=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)
sdk_root=${sdk_root:-/usr/lib/google-cloud-sdk}
emulator() { # $1: a file of the emulator under the SDK's root (a glob), $2: its Debian package
  compgen -G "$sdk_root/$1" >/dev/null && return 0
  echo "setup: installing $2" >&2
  { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; } || {
    echo "setup: $2 is missing and could not be installed; install that Debian package" >&2
    exit 1
  }
}
emulator "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar" google-cloud-cli-firestore-emulator
emulator "platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar" google-cloud-cli-pubsub-emulator

# Node.js runs the Firebase Auth emulator (firebase-tools) and bundles the playground (esbuild); both
# are pinned in package-lock.json. npm ci runs only when the lockfile changes, so that a machine set
# up once works offline. --ignore-scripts: no package's install script runs, and none is needed:
# esbuild finds its binary through its platform's optional dependency, and the one native module,
# re2 (which would compile for minutes), is optional to firebase-tools' Hosting server, not run here.
if ! need node || ! need npm || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "setup: Node.js 20 or newer and npm are required (firebase-tools, esbuild)" >&2
  exit 1
fi
node_stamp="$ROOT/node_modules/.package-lock.sha256"
node_want=$(cat "$ROOT/package.json" "$ROOT/package-lock.json" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_want" ]; then
  echo "setup: installing Node packages into node_modules (npm ci)" >&2
  (cd "$ROOT" && npm ci --ignore-scripts --include=dev --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$node_want" > "$node_stamp"
fi

# Reinstall only when the requirements change.
stamp="$VENV/.requirements.sha256"
want=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV_PYTHON" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv" >&2
  python3 -m venv "$VENV"
  "$VENV_PYTHON" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
  echo "$want" > "$stamp"
fi
export PYTHONPATH="$ROOT"
