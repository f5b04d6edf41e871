"""Per-sketch webhook tokens."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from shared.webhook_tokens import InvalidToken, sketch_token, verify_sketch_token, webhook_url


def test_url_keeps_its_own_query_and_carries_a_token_that_verifies() -> None:
    url = webhook_url("https://hooks.test/novita?region=eu", "secret", "sketch-1", "video")
    query = parse_qs(urlsplit(url).query)

    assert query["region"] == ["eu"] and query["sketch"] == ["sketch-1"] and query["stage"] == ["video"]
    assert verify_sketch_token("secret", "sketch-1", query["token"][0]) == "sketch-1"


@pytest.mark.parametrize(
    ("sketch_id", "token"),
    [("sketch-1", None), ("sketch-1", ""), (None, "x"), ("sketch-2", sketch_token("secret", "sketch-1"))],
)
def test_invalid_tokens_are_refused(sketch_id: str | None, token: str | None) -> None:
    with pytest.raises(InvalidToken):
        verify_sketch_token("secret", sketch_id, token)


def test_token_depends_on_the_secret() -> None:
    assert sketch_token("a", "s") != sketch_token("b", "s")
    with pytest.raises(InvalidToken):
        verify_sketch_token("b", "s", sketch_token("a", "s"))
