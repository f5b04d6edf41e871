"""The Firebase Auth emulator's unsigned ID tokens (shared/edge/callers.py): accepted only while
FIREBASE_AUTH_EMULATOR_HOST is set, as the Admin SDKs have it, and then with every claim checked."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from shared.edge.callers import AuthError, verify_id_token

PROJECT = "demo-sketch"


def unsigned(**claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "aud": PROJECT,
        "sub": "guest-1",
        "auth_time": now,
        "iat": now,
        "exp": now + 3600,
        "firebase": {"sign_in_provider": "anonymous"},
        **claims,
    }

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(body)}."


def test_with_the_emulator_named_its_token_is_accepted_with_its_claims() -> None:
    claims = verify_id_token(unsigned(), PROJECT, "http://127.0.0.1:9/certs", emulated=True)
    assert claims["sub"] == "guest-1" and claims["firebase"]["sign_in_provider"] == "anonymous"


def test_without_the_emulator_named_an_unsigned_token_is_refused_before_any_key_is_fetched() -> None:
    with pytest.raises(AuthError, match="RS256"):
        verify_id_token(unsigned(), PROJECT, "http://127.0.0.1:9/certs", emulated=False)


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"aud": "another-project"}, "not meant for this project"),
        ({"iss": "https://securetoken.google.com/another"}, "not issued for this project"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"sub": ""}, "names no user"),
        ({"auth_time": int(time.time()) + 3600}, "auth_time"),
    ],
)
def test_the_emulators_tokens_are_held_to_every_other_claim(claims: dict[str, Any], why: str) -> None:
    with pytest.raises(AuthError, match=why):
        verify_id_token(unsigned(**claims), PROJECT, "http://127.0.0.1:9/certs", emulated=True)
