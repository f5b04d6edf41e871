"""Node tools the local stack runs from the project's own node_modules (package.json, installed by
scripts/setup.sh with npm ci): the Firebase Auth emulator and esbuild."""

from __future__ import annotations

import shutil

from devstack.functions import ROOT

NODE_MODULES = ROOT / "node_modules"


def node_command(script: str) -> list[str]:
    """`node node_modules/<script>`; FileNotFoundError saying what to run when either is missing."""
    node = shutil.which("node")
    path = NODE_MODULES / script
    if node is None or not path.is_file():
        raise FileNotFoundError(
            f"the local stack needs Node.js and node_modules/{script}: run scripts/setup.sh (npm ci)"
        )
    return [node, str(path)]
