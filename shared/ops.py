"""What an operator runs by hand, with the functions' own configuration in the environment:

python -m shared.ops sweep [--seconds S]      # the recovery sweep, as Cloud Scheduler runs it
"""

from __future__ import annotations

import argparse
import json
import sys

from shared.core.deadline import Deadline
from shared.pipeline.recovery import SWEEP_SECONDS
from shared.runtime import get_runtime, load_settings_or_exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.ops", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="look at every sketch that is due, as the sweep does")
    sweep.add_argument("--seconds", type=float, default=SWEEP_SECONDS, help="time budget of a run")
    args = parser.parse_args(argv)
    load_settings_or_exit()
    report = get_runtime().recovery.sweep(Deadline.after(args.seconds))
    print(json.dumps(report.to_json()))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
