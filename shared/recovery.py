"""The recovery sweep: finish sketches whose webhooks never came, by asking task-result.

Runs as a command (`python -m shared.recovery`) and behind `novita_webhook?action=sweep`, which
Cloud Scheduler calls with `Authorization: Bearer <sweep token>` (`python3 -m
shared.webhook_tokens sweep-token` prints it, from WEBHOOK_SECRET).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta

from shared.pipeline import SweepReport
from shared.runtime import get_runtime, load_settings_or_exit
from shared.sketch import utcnow

DEFAULT_BATCH = 50
DEFAULT_SECONDS = 40.0


def sweep(limit: int = DEFAULT_BATCH, seconds: float = DEFAULT_SECONDS) -> SweepReport:
    return get_runtime().pipeline.sweep(limit=limit, deadline=utcnow() + timedelta(seconds=seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.recovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=DEFAULT_BATCH, help="sketches per run at most")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="time budget of a run")
    args = parser.parse_args(argv)
    load_settings_or_exit()
    report = sweep(args.limit, args.seconds)
    print(json.dumps({"examined": report.examined, "changed": report.changed, "errors": report.errors}))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
