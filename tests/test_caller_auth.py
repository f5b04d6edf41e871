"""`create_sketch` with `AUTH_MODE=firebase`, over real HTTP, against keys served on loopback.

The tests mint their own RSA keys and self-signed certificates and serve `{kid: certificate}`
the way Google does, so no token or key ever comes from Google.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from conftest import PROJECT, Stack
from firebase_tokens import CERTS_MAX_AGE, KEY, OTHER_KEY, CertServer, SigningKey, claims, google_certs

from shared.edge.callers import max_age

ORIGIN = "https://app.example"
PROMPT = {"prompt": "a lighthouse knitting a scarf"}


@pytest.fixture(scope="module")
def certs() -> Iterator[CertServer]:
    with google_certs() as server:
        yield server


@pytest.fixture(scope="module")
def firebase_stack(stack_factory: Callable[..., Stack], certs: CertServer) -> Stack:
    return stack_factory(
        "firebase",
        AUTH_MODE="firebase",
        FIREBASE_CERTS_URL=certs.url,
        # Google's signed tokens only: the Auth emulator's unsigned ones are refused here.
        FIREBASE_AUTH_EMULATOR_HOST="",
        CORS_ALLOWED_ORIGINS=ORIGIN,
        MAX_SKETCHES_IN_PROGRESS="2",
    )


@pytest.fixture
def fb(firebase_stack: Stack, certs: CertServer) -> Iterator[Stack]:
    certs.certs = {KEY.kid: KEY.cert_pem}
    firebase_stack.clean()
    yield firebase_stack
    firebase_stack.simulator.wait_idle(10)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    return head + "." + _b64(sign(head.encode()))


def swap_payload(token: str, payload: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64(json.dumps(payload).encode())}.{signature}"


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def post(stack: Stack, token: str | None = None, **headers: str) -> httpx.Response:
    return stack.post_sketch(PROMPT, headers=bearer(token, **headers) if token else headers)


def get(stack: Stack, sketch_id: str, token: str | None = None) -> httpx.Response:
    return stack.http.get(stack.create.url, params={"id": sketch_id}, headers=bearer(token) if token else {})


BAD_TOKENS: list[tuple[str, Callable[[], str]]] = [
    ("expired", lambda: KEY.sign(claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600))),
    ("wrong audience", lambda: KEY.sign(claims(aud="another-project"))),
    ("audience list", lambda: KEY.sign(claims(aud=[PROJECT, "another-project"]))),
    ("wrong issuer", lambda: KEY.sign(claims(iss="https://securetoken.google.com/another-project"))),
    ("google accounts issuer", lambda: KEY.sign(claims(iss="https://accounts.google.com"))),
    ("signed by another key", lambda: OTHER_KEY.sign(claims())),
    ("unknown kid", lambda: KEY.sign(claims(), kid="key-unknown")),
    ("no kid", lambda: pyjwt.encode(claims(), KEY.private, algorithm="RS256")),
    ("alg none", lambda: unsigned_token({"alg": "none", "kid": KEY.kid}, claims(), lambda _: b"")),
    (
        "HS256 keyed by the certificate",
        lambda: unsigned_token(
            {"alg": "HS256", "kid": KEY.kid},
            claims(),
            lambda m: hmac.new(KEY.cert_pem.encode(), m, hashlib.sha256).digest(),
        ),
    ),
    ("no sub", lambda: KEY.sign(claims(sub=None))),
    ("empty sub", lambda: KEY.sign(claims(sub=""))),
    ("sub not a string", lambda: KEY.sign(claims(sub=42))),
    ("iat in the future", lambda: KEY.sign(claims(iat=int(time.time()) + 600))),
    ("auth_time in the future", lambda: KEY.sign(claims(auth_time=int(time.time()) + 600))),
    ("no auth_time", lambda: KEY.sign(claims(auth_time=None))),
    ("no exp", lambda: KEY.sign(claims(exp=None))),
    ("payload swapped after signing", lambda: swap_payload(KEY.sign(claims("user-a")), claims("user-b"))),
    ("not a JWT", lambda: "not-a-jwt"),
    ("header not an object", lambda: _b64(b"[]") + "." + _b64(b"{}") + "." + _b64(b"x")),
]


def test_no_token_is_refused_and_nothing_is_written(fb: Stack) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
        response = fb.post_sketch(PROMPT, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "unauthenticated"
    assert fb.stored_count() == 0
    assert fb.tasks_created("txt2img") == 0


@pytest.mark.parametrize(("case", "make"), BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
def test_bad_token_is_refused_and_nothing_is_written(fb: Stack, case: str, make: Callable[[], str]) -> None:
    response = post(fb, make())
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthenticated"
    assert fb.stored_count() == 0
    assert fb.tasks_created("txt2img") == 0


def test_valid_token_creates_a_sketch_owned_by_the_caller(fb: Stack) -> None:
    response = post(fb, KEY.sign(claims("user-a")))
    assert response.status_code == 202, response.text
    stored = fb.stored(response.json()["id"])
    assert stored is not None and stored.user_id == "user-a"


def test_only_the_owner_can_read_a_sketch(fb: Stack) -> None:
    sketch_id = post(fb, KEY.sign(claims("user-a"))).json()["id"]

    own = get(fb, sketch_id, KEY.sign(claims("user-a")))
    assert own.status_code == 200 and own.json()["id"] == sketch_id
    assert get(fb, sketch_id, KEY.sign(claims("user-b"))).status_code == 404
    assert get(fb, sketch_id).status_code == 401
    assert get(fb, sketch_id, OTHER_KEY.sign(claims("user-a"))).status_code == 401


def test_in_progress_limit_is_per_user(fb: Stack) -> None:
    fb.simulator.configure(drop_webhooks=True)  # keep the sketches in progress
    alice, bob = KEY.sign(claims("alice")), KEY.sign(claims("bob"))
    assert [post(fb, alice).status_code for _ in range(2)] == [202, 202]

    refused = post(fb, alice)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_sketches"
    assert post(fb, bob).status_code == 202
    assert fb.stored_count() == 3


def test_in_progress_limit_holds_under_concurrent_requests(fb: Stack) -> None:
    fb.simulator.configure(drop_webhooks=True)
    token = KEY.sign(claims("carol"))

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda _: post(fb, token).status_code, range(8)))

    assert codes == [202, 202] + [429] * 6
    assert fb.stored_count() == 2
    assert fb.tasks_created("txt2img") == 2


def test_a_finished_sketch_frees_its_place(fb: Stack) -> None:
    fb.simulator.configure(image_delay=1.5)  # both stay in progress while the third is refused
    token = KEY.sign(claims("dave"))
    first, second = post(fb, token).json(), post(fb, token).json()
    assert post(fb, token).status_code == 429

    fb.wait_for_status(first["id"], "complete")

    assert post(fb, token).status_code == 202
    assert second["status"] == "image_pending"


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }


def test_cors_only_for_the_allowed_origin(fb: Stack) -> None:
    token = KEY.sign(claims())
    allowed = post(fb, token, Origin=ORIGIN)
    assert allowed.status_code == 202
    assert allowed.headers.get("Access-Control-Allow-Origin") == ORIGIN
    # A refusal still carries CORS, so the browser app can read the 401.
    assert post(fb, None, Origin=ORIGIN).headers.get("Access-Control-Allow-Origin") == ORIGIN
    preflight = fb.http.options(fb.create.url, headers=preflight_headers(ORIGIN))
    assert preflight.headers.get("Access-Control-Allow-Origin") == ORIGIN
    assert "authorization" in preflight.headers.get("Access-Control-Allow-Headers", "").lower()

    other = "https://evil.example"
    assert "Access-Control-Allow-Origin" not in post(fb, token, Origin=other).headers
    other_preflight = fb.http.options(fb.create.url, headers=preflight_headers(other))
    assert "Access-Control-Allow-Origin" not in other_preflight.headers


def test_keys_are_cached_for_max_age_and_a_rotation_is_picked_up(fb: Stack, certs: CertServer) -> None:
    # Fill the cache, then: a burst of requests fetches the keys at most once more.
    token = KEY.sign(claims())
    assert get(fb, "no-such-sketch", token).status_code == 404
    before = certs.fetches
    for _ in range(5):
        assert get(fb, "no-such-sketch", token).status_code == 404
    assert certs.fetches - before <= 1

    new_key = SigningKey(f"key-{uuid.uuid4().hex[:8]}")
    certs.certs = {KEY.kid: KEY.cert_pem, new_key.kid: new_key.cert_pem}
    rotated = new_key.sign(claims())
    deadline = time.monotonic() + CERTS_MAX_AGE + 5
    while (status := get(fb, "no-such-sketch", rotated).status_code) == 401 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 404  # authenticated; the sketch just does not exist


def test_tokens_never_reach_the_logs(fb: Stack) -> None:
    valid, expired = KEY.sign(claims("user-log")), KEY.sign(claims(exp=int(time.time()) - 3600))
    garbage = f"{uuid.uuid4().hex}.{uuid.uuid4().hex}"
    assert post(fb, valid).status_code == 202
    assert post(fb, expired).status_code == 401
    assert post(fb, garbage).status_code == 401
    time.sleep(0.2)
    text = fb.create.log_path.read_text(encoding="utf-8")
    assert "caller refused" in text
    for token in (valid, expired, garbage):
        assert all(part not in text for part in token.split(".")[1:])


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("public, max-age=19800, must-revalidate, no-transform", 19800),
        ("max-age=0", 0),
        ('MAX-AGE="60"', 60),
        ("s-maxage=5, max-age=7", 7),
        ("no-cache", 3600),
        ("", 3600),
    ],
)
def test_max_age_from_cache_control(header: str, seconds: float) -> None:
    assert max_age(header) == seconds
