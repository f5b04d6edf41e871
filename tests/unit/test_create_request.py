"""The body of `POST create_sketch` (shared/sketch/request.py): one rule per field, the same in the
code and in openapi.json's patterns."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from shared.sketch.request import BIDI_CONTROLS, TEXT_PATTERN, VISIBLE_PATTERN, CreateSketchRequest


def refused(body: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as error:
        CreateSketchRequest.model_validate(body)
    first = error.value.errors()[0]
    return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "video_prompt"])
@pytest.mark.parametrize("control", sorted(BIDI_CONTROLS))
def test_bidirectional_controls_are_refused_in_every_prompt_naming_them(field: str, control: str) -> None:
    message = refused({"prompt": "a walrus", field: f"walrus {control}gnp.exe"})
    assert message.startswith(f"{field}: ") and f"U+{ord(control):04X}" in message


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "video_prompt"])
def test_the_same_control_character_rule_holds_for_every_prompt(field: str) -> None:
    assert "control characters" in refused({"prompt": "a walrus", field: "a\x07b"})
    ok = CreateSketchRequest.model_validate({"prompt": "a walrus", field: "line one\n\tline two\r\n"})
    assert getattr(ok, field).startswith("line one" if field != "prompt" else "line one")


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "video_prompt"])
def test_types_are_strict_and_null_is_no_string(field: str) -> None:
    assert refused({"prompt": "a walrus", field: None}).startswith(f"{field}: Input should be a valid string")


def test_lengths_count_the_text_as_sent_and_spaces_around_it_are_dropped() -> None:
    assert CreateSketchRequest.model_validate({"prompt": "  a walrus  "}).prompt == "a walrus"
    assert CreateSketchRequest.model_validate({"prompt": "x" * 1024}).prompt == "x" * 1024
    assert "at most 1024" in refused({"prompt": "x" * 1023 + "  "})


def test_the_patterns_refuse_exactly_what_the_code_refuses() -> None:
    """Every character of the Basic Multilingual Plane: the JSON Schema pattern openapi.json carries and
    the validator agree on each."""
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue  # lone surrogates are no text at all (refused as such)
        text = f"a{chr(code)}"
        pattern_ok = re.fullmatch(TEXT_PATTERN, text) is not None
        try:
            CreateSketchRequest.model_validate({"prompt": "a", "negative_prompt": text})
            code_ok = True
        except ValidationError:
            code_ok = False
        assert pattern_ok == code_ok, f"U+{code:04X}"
    assert re.fullmatch(VISIBLE_PATTERN, "  x ") and not re.fullmatch(VISIBLE_PATTERN, " \t ")
