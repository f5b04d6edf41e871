"""The chaos run: the local stack, at least 200 sketches sent by guests while every fault happens at
once and at random (from the seed), then the faults stop, the machine settles, and an audit of every
sketch against the simulator's ledger of paid calls.

    python -m chaos [--sketches N] [--seed S] [--personality guide|reference] [--out DIR]

It ends with one line, `chaos: <n> sketches, <c> complete, <f> failed, <s> stuck, <p> paid tasks,
<x> paid twice`, and exits 1 when a sketch is stuck, a paid call is undocumented or another check of
the audit fails (each is named above that line), 2 when the run itself could not be carried out.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from chaos.run import run
from devstack.functions import ROOT


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sketches", type=int, default=200, help="how many sketches to send (default 200)")
    parser.add_argument(
        "--seed", type=int, default=1, help="the seed of the schedule and the simulator's dice"
    )
    parser.add_argument("--personality", choices=("guide", "reference"), default="guide")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "out" / "chaos", help="where each run's folder goes"
    )
    args = parser.parse_args(argv)
    if args.sketches < 1:
        parser.error("--sketches must be at least 1")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args.seed, args.sketches, args.personality, args.out)
    except KeyboardInterrupt:
        print("interrupted; the stack has been stopped", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
