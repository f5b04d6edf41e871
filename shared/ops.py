"""What an operator runs by hand, with the functions' own configuration in the environment:

python -m shared.ops sweep [--seconds S]      # the recovery sweep, as Cloud Scheduler runs it
python -m shared.ops delete-user UID          # delete a user's sketches and everything kept about them

`delete-user` pages through the user's sketches as the gallery does and deletes each as
`DELETE create_sketch?id=` does (`shared/pipeline/deletion.py`), printing one JSON line per sketch
with the objects it removed; then it removes the user's places, daily counts and idempotency keys,
and prints a line of totals. Run it again to finish one that stopped.
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
    delete_user = commands.add_parser("delete-user", help="delete a user's sketches and their media")
    delete_user.add_argument("uid", help="the user's Firebase uid")
    args = parser.parse_args(argv)
    load_settings_or_exit()
    runtime = get_runtime()
    if args.command == "delete-user":
        sketches = objects = 0
        for removed in runtime.deletion.delete_user(args.uid):
            print(json.dumps(removed.to_json()), flush=True)
            sketches, objects = sketches + 1, objects + len(removed.objects)
        records = runtime.deletion.forget_user(args.uid)
        print(json.dumps({"user": args.uid, "sketches": sketches, "objects": objects, "records": records}))
        return 0
    report = runtime.recovery.sweep(Deadline.after(args.seconds))
    print(json.dumps(report.to_json()))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
