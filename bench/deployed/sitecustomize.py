"""Bench only: a function process that can import what its deployment ships and nothing else.

deploy.sh ships requirements.txt; the venv the bench runs from also holds the tests' and the tools'
packages, and a shipped package may import another whenever it is installed (httpx imports its
command line, and with it rich and pygments, if they are there: tens of milliseconds of a cold
start that a deployed function never spends). Put this folder first on PYTHONPATH and set
BENCH_NOT_SHIPPED to the top-level modules only unshipped packages provide (comma-separated; the
bench works them out once, `bench.stack.not_shipped`): importing one fails as it would where the
function is deployed. Nothing is looked up here, so the process starts no slower for it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

_NOT_SHIPPED = frozenset(filter(None, os.environ.get("BENCH_NOT_SHIPPED", "").split(",")))


class _NotShipped:
    """A finder ahead of all others that refuses the top-level modules of unshipped packages."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name.partition(".")[0] in _NOT_SHIPPED:
            raise ModuleNotFoundError(f"No module named {name!r} (not shipped with the function)", name=name)
        return None


if _NOT_SHIPPED:
    sys.meta_path.insert(0, _NotShipped())
