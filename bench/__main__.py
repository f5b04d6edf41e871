"""The benchmark: the real stack on loopback (the Firestore, Pub/Sub and Cloud Storage emulators,
the Novita simulator, a media host, the functions under functions-framework, novita_webhook as its
two doors), each figure printed beside a limit measured in the same run.

    scripts/bench.sh [--runs N] [--check] [--only SECTION,...] [--skip SECTION,...]

Sections (all by default, in this order):
  cold       process start to the first answer that reads Firestore: create_sketch, and each door of
             novita_webhook (private: a pushed step; public: a Novita delivery); limit 1.5x a bare
             functions-framework function's first answer
  delivery   a webhook delivery's answer on the public door (image success; its 9.9 MB still on a
             host serving 2 MB/s, fetched later by the chain step); goal p99 <= 500 ms
  chain      the chain step for a 9.9 MB still, request to answer; limit 1.3x + 30 ms of plain
             httpx doing the same work (download, the still's check, upload, Kling); the private
             door worker's peak RSS growth <= +25 MB
  load       32 chain steps at once on one instance (32 threads); no error, p99 <= 4x a single one;
             with Novita answering Kling in --novita-latency-ms, then with no wait (judged only
             where the CPU work fits the limit on this machine)
  copy       the copy step of a 50 MB video into the bucket; <= 1.3x plain httpx download-then-
             upload; the private door worker's peak RSS growth <= +25 MB
  e2e        prompt to stored video under each simulator personality, Novita calls per sketch
  firestore  Firestore calls per sketch, creation to complete (counted), by process and by step
  backlog    1,000 sketches whose webhooks never come, drained by the sweep; goal 180 s
  soak       one private door process through the check, chain and copy steps of 1,000 sketches:
             RSS growth from sketch 100 to sketch 1,000 < 10 MB; open fds and threads the same
  hostile    bench/hostile.py against create_sketch and both doors (body guard): RSS, stalls, the
             public door's drip-fed ?action=step bodies, 5xx
  profile    where the chain step's time goes (pyinstrument)
It reports and exits 0; with --check it exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import flows, hostile, hot, soak
from bench.measure import machine_busy, ms, say, spread
from bench.stack import (
    EMULATOR_WARMUP_OPS,
    ROOT,
    WARMUP_ROUND_OPS,
    WORKER,
    Deployment,
    Stack,
    running_stack,
)
from bench.stills import BIG_NAME, VIDEO_BYTES, write_media
from devstack.pubsub import EMULATOR_PUSH_LOOPS

SECTIONS = (
    "cold",
    "delivery",
    "chain",
    "load",
    "copy",
    "e2e",
    "firestore",
    "backlog",
    "soak",
    "hostile",
    "profile",
)
NEEDS_MAIN = {"chain", "load"}


@dataclass
class Row:
    figure: str
    measured: str
    limit: str
    ratio: str
    goal: str
    met: bool | None  # None: for information, no goal


def info(figure: str, measured: str, limit: str = "-") -> Row:
    return Row(figure, measured, limit, "-", "information", None)


def render(rows: list[Row]) -> str:
    head = ["figure", "measured", "limit (same run)", "ratio", "goal", "met?"]
    body = [
        [r.figure, r.measured, r.limit, r.ratio, r.goal, {True: "yes", False: "**no**", None: "info"}[r.met]]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def memory_row(figure: str, grown: list[float], idle_kb: list[int]) -> Row:
    value = statistics.median(grown)
    return Row(
        figure,
        f"+{value:.1f} MB ({min(grown):.1f}-{max(grown):.1f})",
        f"idle {statistics.median(idle_kb) / 1024:.0f} MB + 25 MB",
        f"{value / 25:.2f} of it",
        "<= +25 MB",
        value <= 25,
    )


# ------------------------------------------------------------------------------------ sections


# The goal for a function's first answer after its process starts, as a multiple of a bare
# functions-framework function's first answer in the same run.
COLD_GOAL = 1.5
# Packages named in the import breakdown of each function.
IMPORT_TOP = 8
COLD_ROWS = (
    ("create_sketch", "create_sketch (first GET ?id=)"),
    ("private door", "novita_webhook, private door (first pushed step, the sketch read)"),
    ("public door", "novita_webhook, public door (first delivery for a sketch, answered)"),
)


def cold_rows(stack: Stack, runs: int) -> list[Row]:
    result = hot.cold_start(stack, runs)
    cold, imports = result.first_answer, result.imports
    bare = statistics.median(cold["bare"])
    rows = []
    for name, what in COLD_ROWS:
        value = statistics.median(cold[name])
        rows.append(
            Row(
                f"cold start {what}",
                f"{ms(value)} ({spread(cold[name])})",
                f"{COLD_GOAL:g} x bare {ms(bare)} = {ms(COLD_GOAL * bare)}",
                f"{value / bare:.2f}x",
                f"<= {COLD_GOAL:g}x",
                value <= COLD_GOAL * bare,
            )
        )
    base = imports["bare"]
    for name, seconds in imports.items():
        # What the function imports beyond the bare function, largest first.
        beyond = sorted(((s - base.get(p, 0.0), p) for p, s in seconds.items()), reverse=True)
        top = ", ".join(f"{p} {s * 1000:.0f}" for s, p in beyond[:IMPORT_TOP] if s >= 0.0005)
        extra = f"; beyond bare (ms): {top}" if name != "bare" else ""
        rows.append(
            info(
                f"  imports of {name} as the process loads it (python -X importtime, own times)",
                f"{sum(seconds.values()) * 1000:.0f} ms in all{extra}",
            )
        )
    return rows


def delivery_rows(stack: Stack, runs: int) -> list[Row]:
    result = hot.delivery(stack, runs)
    p50 = statistics.median(result.latencies)
    p99 = hot.p99(result.latencies)
    ok = p99 <= hot.DELIVERY_GOAL and not result.errors
    for error in result.errors[:5]:
        say(f"  delivery error: {error}")
    return [
        Row(
            f"webhook delivery answer, image success, 9.9 MB still at 2 MB/s (of {len(result.latencies)})",
            f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (run p99 {spread(result.run_p99)}); "
            f"{len(result.errors)} errors",
            f"500 ms; the still alone takes {result.still_fetch:.2f} s from that host",
            f"{p99 / hot.DELIVERY_GOAL:.2f} of it",
            "p99 <= 500 ms",
            ok,
        ),
        info(
            "  the same delivery's answer to its chain's Kling request (still fetched at 2 MB/s)",
            f"{statistics.median(result.to_kling):.2f} s ({spread(result.to_kling, 1, 's', 2)})",
        ),
    ]


def chain_rows(stack: Stack, main: Deployment, runs: int) -> list[Row]:
    result = hot.chain(stack, main, runs)
    value, base = statistics.median(result.chain), statistics.median(result.baseline)
    limit = 1.3 * base + 0.030
    parts = {k: statistics.median(p.get(k, 0.0) for p in result.parts) for k in result.parts[0]}
    base_parts = {k: statistics.median(p[k] for p in result.baseline_parts) for k in result.baseline_parts[0]}
    rows = [
        Row(
            "chain step, 9.9 MB still: fetched, checked, stored in the bucket, sent to Kling",
            f"{ms(value)} ({spread(result.chain)})",
            f"1.3 x plain {ms(base)} + 30 ms = {ms(limit)}",
            f"{value / base:.2f}x",
            "<= 1.3x + 30 ms",
            value <= limit,
        ),
        info(
            "  where the chain step's time went (medians, ms; the step's own trace)",
            hot.describe_parts(parts),
            "httpx: " + hot.describe_parts(base_parts),
        ),
        memory_row(
            "memory: private door worker peak RSS during the chain step", result.grown_mb, result.idle_kb
        ),
        Row(
            "memory: the same, the instance's first chain step (runtime already built)",
            f"+{result.first[1]:.1f} MB (the step took {ms(result.first[0])})",
            "idle + 25 MB",
            f"{result.first[1] / 25:.2f} of it",
            "<= +25 MB",
            result.first[1] <= 25,
        ),
    ]
    if not result.exact_peak:
        say("  (peak RSS from 2 ms samples: clear_refs was not allowed)")
    return rows


def load_rows(stack: Stack, main: Deployment, runs: int, latency: float) -> list[Row]:
    rows = []
    for wait in (latency, 0.0):
        say(f"load, Novita answering Kling in {ms(wait)} ...")
        load = hot.load(stack, main, runs, wait)
        single, p99 = statistics.median(load.single), statistics.median(load.p99)
        floor = statistics.median(load.cpu_floor)
        limit = 4 * single
        # A goal is judged only where this machine can reach it: when the CPU work of the 32 steps
        # (every process of the stack shares these cores) needs more wall time than the limit
        # allows, no code could meet it here, and the row says so instead.
        reachable = floor <= limit
        how = f"Novita answers Kling in {ms(wait)}" if wait else "no network wait, all on loopback"
        goal = "no error; <= 4x" if reachable else "no error; 4x is below the CPU floor here"
        met = (p99 <= limit and not load.errors) if reachable else (None if not load.errors else False)
        rows.append(
            Row(
                f"load: p99 of {hot.LOAD_CONCURRENCY} chain steps at once, one instance ({how})",
                f"{ms(p99)} ({spread(load.p99)}); {len(load.errors)} errors; CPU floor {ms(floor)}",
                f"4 x single {ms(single)} = {ms(limit)}",
                f"{p99 / single:.2f}x",
                goal,
                met,
            )
        )
        if load.parts:
            rows.append(
                info(
                    "  where those steps' time went (ms, median/worst of all runs' steps; their trace)",
                    hot.spread_parts(load.parts),
                    f"listen-queue drops {sum(load.overflows)} in {len(load.overflows)} runs",
                )
            )
        cpu = ", ".join(f"{name} {ms(statistics.median(v))}" for name, v in load.cpu.items())
        say(
            f"  load, median of runs: p50 {ms(statistics.median(load.p50))}, all answered in "
            f"{ms(statistics.median(load.wall))}, "
            f"private door RSS +{statistics.median(load.grown_mb):.1f} MB; "
            f"CPU while the {hot.LOAD_CONCURRENCY} ran: {cpu}; CPU floor {ms(floor)}"
        )
        for error in load.errors[:5]:
            say(f"  load error: {error}")
    return rows


def copy_rows(stack: Stack, runs: int) -> list[Row]:
    result = hot.copy(stack, runs)
    value, base = statistics.median(result.copy), statistics.median(result.baseline)
    return [
        Row(
            f"copy step, {VIDEO_BYTES / 1e6:.0f} MB video from the media host into the bucket",
            f"{ms(value)} ({spread(result.copy)})",
            f"1.3 x httpx download-then-upload {ms(base)} = {ms(1.3 * base)}",
            f"{value / base:.2f}x",
            "<= 1.3x",
            value <= 1.3 * base,
        ),
        memory_row(
            "memory: private door worker peak RSS during the copy step", result.grown_mb, result.idle_kb
        ),
        Row(
            "memory: the same, the instance's first copy step (runtime already built)",
            f"+{result.first[1]:.1f} MB (the step took {ms(result.first[0])})",
            "idle + 25 MB",
            f"{result.first[1] / 25:.2f} of it",
            "<= +25 MB",
            result.first[1] <= 25,
        ),
    ]


def _calls(run: flows.SketchRun) -> str:
    total = sum(run.calls[c] for c in flows.CALLS)
    parts = ", ".join(f"{c.replace('_', '-')} {run.calls[c]}" for c in flows.CALLS if run.calls[c])
    refused = sum(run.refused.values())
    return f"{total} Novita calls ({parts}{f'; {refused} refused for their form' if refused else ''})"


def e2e_rows(stack: Stack, later: int) -> list[Row]:
    rows = []
    for result in flows.prompt_to_video(stack, later):
        name = result.personality
        first, rest = result.runs[0], result.runs[1:]
        rows.append(
            info(
                f"prompt to stored video, {name}: the instance's first sketch",
                f"{first.seconds:.2f} s",
                flows.E2E_SETUP,
            )
        )
        rows.append(info(f"  Novita calls, {name}: the instance's first sketch", _calls(first)))
        seconds = [r.seconds for r in rest]
        rows.append(
            info(
                f"prompt to stored video, {name}: later sketches (median of {len(rest)})",
                f"{statistics.median(seconds):.2f} s ({spread(seconds, 1, 's', 2)})",
            )
        )
        rows.append(info(f"  Novita calls, {name}: a later sketch", _calls(rest[-1])))
        kling = [r.to_kling for r in result.runs if r.to_kling is not None]
        what = "the still's webhook arriving" if name == "guide" else "Seedream's answer"
        if kling:
            rows.append(
                info(
                    f"  {what} to the request to Kling, {name} (the functions' own log times)",
                    f"{statistics.median(kling) * 1000:.0f} ms ({spread(kling)})",
                )
            )
    return rows


def _named(summary: dict[str, int], prefix: str) -> str:
    """The counts of `summary` whose keys start with `prefix`, by the rest of their key."""
    return ", ".join(f"{k.removeprefix(prefix)} {v}" for k, v in summary.items() if k.startswith(prefix))


def firestore_rows(stack: Stack, sketches: int) -> list[Row]:
    rows = []
    for work in flows.firestore_work(stack, sketches):
        s = work.summary()
        refused = sum(v for k, v in s.items() if k.startswith("refused"))
        steps = ", ".join(
            f"{kind} {v} ({s.get('in ' + kind, 0)} calls)"
            for kind, v in ((k.removeprefix("step "), v) for k, v in s.items() if k.startswith("step "))
        )
        rows.append(
            info(
                f"Firestore calls per sketch, creation to complete ({work.label})",
                f"{s.get('calls', 0)} calls: {s.get('reads', 0)} reads ({_named(s, 'read ')}), "
                f"{s.get('commits', 0)} commits (writes: {s.get('conditional write', 0)} conditional, "
                f"{s.get('create write', 0)} creates, {s.get('unconditional write', 0)} unconditional), "
                f"{s.get('queries', 0)} queries, {refused} refused (lost races); by process: "
                f"{_named(s, 'by ')}; steps (their calls): {steps}; deliveries: {_named(s, 'delivery ')}; "
                f"{s.get('publishes', 0)} publishes",
            )
        )
    return rows


def backlog_rows(stack: Stack, count: int, sweep_every: float, interval: float, timeout: float) -> list[Row]:
    result = flows.backlog(stack, count, sweep_every, interval, timeout)
    lines, figures = flows.backlog_breakdown(result)
    say(f"  how: {result.setup}\n  settings: {result.settings}")
    for line in lines:
        say(f"  {line}")
    goal = flows.BACKLOG_GOAL
    if result.seconds is not None:
        measured = f"{result.seconds:.0f} s, all {result.complete} complete"
        ratio, met = f"{result.seconds / goal:.2f} of it", result.seconds <= goal
    else:
        measured = f"not drained: {result.complete} complete, {result.failed} failed when it stopped"
        if result.ended:
            ended = ", ".join(f"{name} with {code}" for name, code in result.ended.items())
            measured += f" (a function's process ended: {ended})"
        ratio, met = "-", False
    return [
        Row(
            f"backlog: {count:,} sketches, webhooks dropped, drained by the sweep until stored "
            f"(RECOVERY_INTERVAL_SECONDS={interval:g}, a sweep every {sweep_every:g} s)",
            measured,
            f"180 s; {EMULATOR_PUSH_LOOPS} push loops x steps' own time {figures['push floor']:.0f} s; "
            f"CPU of the stack {figures['cpu floor']:.0f} s",
            ratio,
            "<= 180 s",
            met,
        )
    ]


def soak_rows(stack: Stack, count: int) -> list[Row]:
    result = soak.soak(stack, count)
    for error in result.errors[:5]:
        say(f"  soak error: {error}")
    if len(result.looks) < 2:
        return [Row("soak", f"too few sketches to compare two looks ({count})", "-", "-", "-", False)]
    first, last = result.looks[0], result.looks[-1]
    grown = (last.rss_kb - first.rss_kb) / 1024
    more_sockets = last.sockets - first.sockets
    margin = soak.SOCKET_MARGIN
    where = f"after sketch {first.sketches} / after sketch {last.sketches:,}"
    steps = ", ".join(f"{kind} {n:,}" for kind, n in result.steps.items())
    return [
        Row(
            f"soak: private door worker RSS, {where}",
            f"{first.rss_kb / 1024:.1f} / {last.rss_kb / 1024:.1f} MB: {grown:+.1f} MB",
            f"+{soak.RSS_GOAL_MB:g} MB",
            f"{grown / soak.RSS_GOAL_MB:.2f} of it",
            f"growth < {soak.RSS_GOAL_MB:g} MB",
            grown < soak.RSS_GOAL_MB,
        ),
        Row(
            f"soak: its open file descriptors, {where}",
            f"{first.fds} / {last.fds}: sockets {first.sockets} / {last.sockets}, "
            f"others {first.other_fds} / {last.other_fds}",
            f"others {first.other_fds}; sockets {first.sockets} + {margin} = {first.sockets + margin}",
            "-",
            f"others the same; sockets at most {margin} more",
            last.other_fds == first.other_fds and more_sockets <= margin,
        ),
        Row(
            f"soak: its threads, {where}",
            f"{first.threads} / {last.threads}",
            f"{first.threads} (its pool full from the start)",
            "-",
            "the same",
            last.threads == first.threads,
        ),
        info(
            f"  soak: {count:,} sketches, {soak.LANES} at once, through one private door process",
            f"{result.seconds:.0f} s; steps pushed: {steps}; {len(result.errors)} sketches not complete; "
            f"its CPU per sketch {ms(first.cpu_per_sketch(WORKER))} in the first {first.in_round}, "
            f"{ms(last.cpu_per_sketch(WORKER))} in the last {last.in_round}",
        ),
    ]


def hostile_rows(log_dir: Path) -> list[Row]:
    """bench/hostile.py's figures, for the functions as deployed (create_sketch, both doors of
    novita_webhook), as its own main measures them."""
    rows = []
    logs = log_dir / "hostile"
    logs.mkdir(parents=True, exist_ok=True)
    for spec in hostile.TARGETS:
        if spec.label == "guarded_function":  # the tests' fixture
            continue
        say(f"hostile: {spec.label} ...")
        try:
            target = hostile.start(spec, logs)
        except (RuntimeError, TimeoutError) as exc:
            rows.append(Row(f"hostile {spec.label}", f"did not start: {exc}"[:120], "-", "-", "-", False))
            continue
        try:
            found = hostile.bench(target) if hostile.guarded(target) else []
        finally:
            target.server.stop()
        if not found:
            rows.append(
                Row(
                    f"hostile {spec.label}",
                    "no 413 before the body: guard not installed",
                    "-",
                    "-",
                    "-",
                    False,
                )
            )
        rows += [Row(f"hostile {r.target}: {r.figure}", r.measured, "-", "-", r.goal, r.met) for r in found]
    return rows


# ---------------------------------------------------------------------------------------- main


def chosen(args: argparse.Namespace) -> list[str]:
    only = {s for group in args.only for s in group.split(",") if s} or set(SECTIONS)
    skip = {s for group in args.skip for s in group.split(",") if s}
    unknown = (only | skip) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s): {', '.join(sorted(unknown))}; sections: {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in only and s not in skip]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per figure; the median is reported (5)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--only", action="append", default=[], metavar="SECTION[,SECTION]")
    parser.add_argument("--skip", action="append", default=[], metavar="SECTION[,SECTION]")
    parser.add_argument("--profile-chains", type=int, default=3, help="chain steps profiled per still (3)")
    parser.add_argument("--firestore-sketches", type=int, default=2, help="sketches counted per case (2)")
    parser.add_argument(
        "--e2e-later", type=int, default=4, help="sketches after the first, per personality (4)"
    )
    parser.add_argument("--backlog", type=int, default=1000, help="sketches in the backlog (1000)")
    parser.add_argument("--soak", type=int, default=1000, help="sketches through the soak (1000)")
    parser.add_argument("--sweep-every", type=float, default=3.0, help="seconds between sweeps' starts (3)")
    parser.add_argument(
        "--recovery-interval",
        type=float,
        default=60.0,
        help="the backlog's RECOVERY_INTERVAL_SECONDS (60, the functions' default; the local stack uses 3)",
    )
    parser.add_argument(
        "--backlog-timeout", type=float, default=420.0, help="give the drain up after (420 s)"
    )
    parser.add_argument(
        "--novita-latency-ms",
        type=float,
        default=200.0,
        help="Novita's answer time for Kling under load (200)",
    )
    parser.add_argument("--logs", type=Path, default=ROOT / "out" / "bench", help="process logs and traces")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    sections = chosen(args)
    busy = machine_busy()
    if busy > 0.15:
        say(f"bench: WARNING: the machine is {busy:.0%} busy before the bench starts; figures will be noisy")
    started = time.monotonic()
    args.logs.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    profile_text = None
    timings: dict[str, float] = {}
    stacked = [s for s in sections if s != "hostile"]
    if stacked:
        with tempfile.TemporaryDirectory(prefix="bench-media-") as media_dir:
            sizes = write_media(Path(media_dir))
            say(
                f"bench: {args.runs} runs; sections {', '.join(sections)}; media {sizes}; logs in {args.logs}"
            )
            with running_stack(args.logs, Path(media_dir)) as stack:
                say(f"stack up in {time.monotonic() - started:.1f} s")
                warmup, costs = stack.warm_emulator()
                say(
                    f"emulator warmed in {warmup:.1f} s: {EMULATOR_WARMUP_OPS} calls, then rounds of "
                    f"{WARMUP_ROUND_OPS}; its CPU per read after each: "
                    + ", ".join(f"{c * 1000:.1f} ms" for c in costs)
                )
                main_dep = None
                if NEEDS_MAIN & set(stacked):
                    main_dep = stack.deploy("main", trace=args.logs / "main-trace.jsonl")
                for section in stacked:
                    say(f"{section} ...")
                    t0 = time.monotonic()
                    if section == "cold":
                        rows += cold_rows(stack, args.runs)
                    elif section == "delivery":
                        rows += delivery_rows(stack, args.runs)
                    elif section == "chain":
                        assert main_dep is not None
                        rows += chain_rows(stack, main_dep, args.runs)
                    elif section == "load":
                        assert main_dep is not None
                        rows += load_rows(stack, main_dep, args.runs, args.novita_latency_ms / 1000)
                    elif section == "copy":
                        rows += copy_rows(stack, args.runs)
                    elif section == "e2e":
                        rows += e2e_rows(stack, max(1, args.e2e_later))
                    elif section == "firestore":
                        rows += firestore_rows(stack, args.firestore_sketches)
                    elif section == "backlog":
                        rows += backlog_rows(
                            stack,
                            args.backlog,
                            args.sweep_every,
                            args.recovery_interval,
                            args.backlog_timeout,
                        )
                    elif section == "soak":
                        rows += soak_rows(stack, args.soak)
                    elif section == "profile" and args.profile_chains > 0:
                        profile_text = hot.profile(stack, args.profile_chains, top=18)
                    timings[section] = time.monotonic() - t0
    if "hostile" in sections:
        t0 = time.monotonic()
        rows += hostile_rows(args.logs)
        timings["hostile"] = time.monotonic() - t0
    load_avg = Path("/proc/loadavg").read_text().split()[:3]
    say(
        f"\nfinished in {time.monotonic() - started:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"); machine busy before start {busy:.0%}, load average now {' '.join(load_avg)} "
        f"on {os.cpu_count()} CPUs"
    )
    if profile_text:
        say(
            f"\nwhere the chain step's time goes ({BIG_NAME} and the typical still; pyinstrument)\n"
            + profile_text
        )
    say("\n" + render(rows))
    missed = [r.figure.strip() for r in rows if r.met is False]
    if missed:
        say(f"\ngoals missed: {'; '.join(missed)}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
