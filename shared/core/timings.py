"""Every time limit that must stay in order with another, in one place (seconds).

A paid request is never sent twice only while these hold: a step's network calls end inside the
step's deadline, which ends inside the function's timeout, which ends before Pub/Sub's ack deadline
(so Pub/Sub never delivers a step again while it may still run). `ORDER` states each rule;
`tests/unit/test_timings.py` fails when one breaks, and `python3 -m shared.core.timings` prints them.
The standard library only: deploy.sh reads the function timeouts through `shared.pipeline.topology`.
"""

from __future__ import annotations

import sys

# --- Novita: one request's phases (shared/novita/client.py)
NOVITA_CONNECT = 5.0
NOVITA_READ = 30.0
# A 10 MB still uploaded to Kling may take a while to write.
NOVITA_WRITE = 60.0
# Seedream 3.0 draws while its request waits.
SEEDREAM_READ = 100.0
# A POST is re-sent only when Novita surely did not receive it (connect failure, 429), within this.
NOVITA_POST_RETRY_WINDOW = 10.0
# A paid POST is sent only while at least this long is left to hear its answer.
MIN_POST_SECONDS = 2.0
# The most one paid request may take, every phase at its limit.
KLING_REQUEST_BUDGET = NOVITA_CONNECT + NOVITA_WRITE + NOVITA_READ
# Seedream's body is a small JSON object: a few seconds to write it at most.
SEEDREAM_REQUEST_BUDGET = NOVITA_CONNECT + 5.0 + SEEDREAM_READ

# --- Google's APIs (shared/google/api.py): each attempt, and the window attempts start within.
GOOGLE_CONNECT = 1.0
GOOGLE_READ = 2.0
GOOGLE_RETRY_WINDOW = 2.5
GOOGLE_CALL_BUDGET = GOOGLE_RETRY_WINDOW + GOOGLE_READ

# --- Media hosts (shared/media/fetch.py): each phase; the whole download stays in its step.
MEDIA_CONNECT = 5.0
MEDIA_READ = 10.0

# --- A Novita delivery: Novita waits this long for the answer, then delivers again.
NOVITA_WEBHOOK_TIMEOUT = 5.0

# --- create_sketch
# The text-to-image request is answered within this, or the sketch is answered with its outcome unknown.
CREATE_START = 25.0
# How long a create holds its sketch's lease: past it, a sketch whose create died is settled.
CREATE_LEASE = CREATE_START + 10.0
CREATE_FUNCTION_TIMEOUT = 60.0
# The body guard (shared/edge/guard.py): silence allowed mid-body, and the whole body's time. A
# phone on a poor link stalls while TCP retransmits a lost segment: 1, 2 then 4 s (RFC 6298), 7 s
# for three losses in a row; 10 s lets that pass. A body here is at most 64 KiB: 26 s at 20 kbit/s
# (a bad GPRS link); the deadline exists because a drip (a byte every 9 s) defeats the read timeout.
BODY_READ_TIMEOUT = 10.0
BODY_DEADLINE = 30.0

# --- The steps (Pub/Sub push to the private door)
STEP_DEADLINE = 150.0
WEBHOOK_FUNCTION_TIMEOUT = 240.0
ACK_DEADLINE = 300.0
# A live step renews its lease this often (a fraction of STEP_LEASE_SECONDS, whose default follows).
LEASE_RENEWALS_PER_LEASE = 3
DEFAULT_STEP_LEASE = 30.0
# The public door answers Novita's deliveries only.
PUBLIC_WEBHOOK_FUNCTION_TIMEOUT = 60.0

# After Novita fails a paid request (429, 5xx, unreachable), the sketch's next one waits this long,
# doubling with each failure in a row up to the most: a replayed or redelivered step cannot hammer it.
PAID_RETRY_BACKOFF_BASE = 2.0
PAID_RETRY_BACKOFF_MAX = 60.0

# --- The sweep (Cloud Scheduler, every minute)
SWEEP_BUDGET = 100.0
SWEEP_PAGE_MARGIN = 10.0
SCHEDULER_ATTEMPT_DEADLINE = 180.0

# --- The balance breaker's probe: one caller at a time asks Novita whether the balance is back. It
# is short, not as long as the slowest paid request: a refused request costs nothing, so the worst a
# slow or dead holder causes is one more question every BREAKER_PROBE seconds, never paid work held off.
BREAKER_PROBE = 10.0

# --- Webhook tokens live this long past the longest a sketch may live (MAX_SKETCH_AGE_SECONDS):
# Novita delivers a task's result within minutes of its end, retries included.
WEBHOOK_TOKEN_MARGIN = 3600.0

# Each rule: (what must be shorter, what it must be shorter than, why).
ORDER: tuple[tuple[str, str, str], ...] = (
    ("KLING_REQUEST_BUDGET", "STEP_DEADLINE", "a Kling request ends inside its step"),
    ("SEEDREAM_REQUEST_BUDGET", "STEP_DEADLINE", "a Seedream request ends inside its step"),
    ("STEP_DEADLINE", "WEBHOOK_FUNCTION_TIMEOUT", "a step ends before its function is stopped"),
    ("WEBHOOK_FUNCTION_TIMEOUT", "ACK_DEADLINE", "Pub/Sub never delivers a step again while it runs"),
    ("SWEEP_BUDGET", "SCHEDULER_ATTEMPT_DEADLINE", "the sweep answers before Cloud Scheduler gives up"),
    ("SCHEDULER_ATTEMPT_DEADLINE", "WEBHOOK_FUNCTION_TIMEOUT", "the function outlives the sweep's attempt"),
    ("SWEEP_PAGE_MARGIN", "SWEEP_BUDGET", "a sweep has time for at least one page"),
    ("GOOGLE_CALL_BUDGET", "NOVITA_WEBHOOK_TIMEOUT", "a delivery is answered before Novita stops waiting"),
    ("CREATE_START", "CREATE_LEASE", "a create's lease outlasts its text-to-image request"),
    ("CREATE_LEASE", "CREATE_FUNCTION_TIMEOUT", "a create that runs out of time is settled by recovery"),
    ("BODY_DEADLINE", "CREATE_FUNCTION_TIMEOUT", "a slow body is cut before the function's timeout"),
    ("NOVITA_POST_RETRY_WINDOW", "CREATE_START", "a create's retries fit in its start"),
    ("MIN_POST_SECONDS", "NOVITA_CONNECT", "a paid POST is not sent without time to connect"),
)


def broken(values: dict[str, float] | None = None) -> list[str]:
    """The rules of ORDER that `values` (default: this module's) break; empty when all hold."""
    values = values or {
        name: float(value)
        for name, value in globals().items()
        if name.isupper() and isinstance(value, int | float)
    }
    return [
        f"{shorter} ({values[shorter]:g} s) must be shorter than {longer} ({values[longer]:g} s): {why}"
        for shorter, longer, why in ORDER
        if not values[shorter] < values[longer]
    ]


if __name__ == "__main__":
    for shorter, longer, why in ORDER:
        print(f"{shorter} {globals()[shorter]:g} s < {longer} {globals()[longer]:g} s: {why}")
    sys.exit(1 if broken() else 0)
