"""Redaction of secrets from what jobs write: every form, split anywhere, in any value."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tagrun.shared.redact import Redactor, env_secrets

SECRET = "hunter2-P@ss word/+?é"
LABEL = "[REDACTED:DB_PASSWORD]"


def encodings(value: str) -> list[str]:
    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
            base64.b64encode(raw).decode().rstrip("="), quote(value), quote_plus(value),
            quote(value, safe=""), json.dumps(value), json.dumps(value, ensure_ascii=False),
            repr(value), raw.hex()]


def test_every_form_is_redacted_in_text() -> None:
    redactor = Redactor({"DB_PASSWORD": SECRET})
    for form in encodings(SECRET):
        out = redactor.text(f"before {form} after")
        assert LABEL in out, form
        assert SECRET not in out and "hunter2" not in out, (form, out)


def test_base64_of_a_text_holding_the_secret_is_redacted() -> None:
    """HTTP basic auth: base64("user:" + password), at any alignment, with anything after."""
    redactor = Redactor({"DB_PASSWORD": SECRET})
    core = base64.b64encode(SECRET.encode()).decode()[:12]
    for prefix in ("", "u", "us", "user:", "a-longer-user:"):
        for suffix in ("", "!", "!!", ":tail"):
            encoded = base64.b64encode(f"{prefix}{SECRET}{suffix}".encode()).decode()
            out = redactor.text(f"Authorization: Basic {encoded}")
            assert LABEL in out, (prefix, suffix)
            decoded_part = out.split(LABEL)
            assert not any(core in part for part in decoded_part)


def test_a_multi_line_secret_is_redacted_whole_and_line_by_line() -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n" \
          "-----END KEY-----\n"
    redactor = Redactor({"KEY": key})
    assert redactor.text(f"x {key} y") == "x [REDACTED:KEY] y"
    lines = redactor.text("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC only\r\nBKcwggSjAgEAAoIBAQC7\r\n")
    assert "MIIEvQ" not in lines and "BKcwgg" not in lines
    assert lines.count("[REDACTED:KEY]") == 2
    assert "MIIEvQ" not in redactor.text(json.dumps({"key": key}))


def test_a_stream_holds_back_a_possible_start_until_the_next_write() -> None:
    stream = Redactor({"DB_PASSWORD": SECRET}).stream()
    first = stream.write("log: hunter2-P@")
    assert first == "log: "  # the rest may be the start of the secret
    assert stream.write("ss word/+?é and more\n") == f"{LABEL} and more\n"
    assert stream.write("no secret here\n") == "no secret here\n"
    assert stream.write("ends with hun") == "ends with "
    assert stream.flush() == "hun"  # not a secret after all: given back at the end


def test_a_stream_waits_when_a_short_form_may_be_the_start_of_a_longer_one() -> None:
    """abcdefgh's base64 core ends a write; the next completes the whole base64: the text
    before the held part goes out at once, and nothing is lost or doubled."""
    stream = Redactor({"X": "abcdefgh"}).stream()
    assert stream.write("hello abcdefgh tail YWJjZGVm") == "hello [REDACTED:X] tail "
    assert stream.write("Z2g= done") + stream.flush() == "[REDACTED:X]= done"


def test_a_stream_fed_one_character_at_a_time_never_lets_the_secret_out() -> None:
    text = f"a {SECRET} b {base64.b64encode(SECRET.encode()).decode()} c {quote(SECRET)}\n"
    stream = Redactor({"DB_PASSWORD": SECRET}).stream()
    out = "".join(stream.write(ch) for ch in text) + stream.flush()
    assert out == Redactor({"DB_PASSWORD": SECRET}).text(text)
    assert out.count(LABEL) == 3


@settings(max_examples=200, deadline=None)
@given(secret=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=4,
                      max_size=40),
       before=st.text(max_size=50), after=st.text(max_size=50),
       cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
@example(secret="000\xa0", before="", after="", cuts=[])  # 3 characters once trimmed
def test_split_anywhere_the_secret_never_passes(secret: str, before: str, after: str,
                                                cuts: list[int]) -> None:
    redactor = Redactor({"S": secret})
    text = before + secret + after
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    stream = redactor.stream()
    out = "".join(stream.write(p) for p in pieces) + stream.flush()
    assert secret not in out
    assert "[REDACTED:S]" in out


def test_results_are_redacted_through_keys_values_and_numbers() -> None:
    redactor = Redactor({"DB_PASSWORD": SECRET, "PIN": "12345678"})
    result = {"leak": SECRET, SECRET: [SECRET * 2, {"n": 12345678}], "ok": 1, "none": None}
    redacted = redactor.value(result)
    assert SECRET not in json.dumps(redacted, ensure_ascii=False)
    assert redacted["ok"] == 1 and redacted["none"] is None
    assert redacted[LABEL][1] == {"n": "[REDACTED:PIN]"}


def test_short_and_empty_values_are_not_searched_for() -> None:
    redactor = Redactor({"EMPTY": "", "SHORT": "ab"})
    assert not redactor
    assert redactor.text("ab ab") == "ab ab"


def test_env_secrets_picks_credential_looking_names() -> None:
    env = {"API_TOKEN": "tok-value-1", "DB_PASSWORD": "pw-value", "SIGNING_PRIVATE_KEY": "kkkk",
           "HOME": "/root", "GITHUB_TOKEN": "abc", "my_secret": "lower-case"}
    found = env_secrets(env, ("*_TOKEN", "*_PASSWORD", "*_PRIVATE_KEY", "*_SECRET"))
    assert found == {"API_TOKEN": "tok-value-1", "DB_PASSWORD": "pw-value",
                     "SIGNING_PRIVATE_KEY": "kkkk", "my_secret": "lower-case"}
    assert env_secrets(env, ()) == {}


def test_positions_in_a_redacted_text_move_with_it() -> None:
    redactor = Redactor({"DB_PASSWORD": SECRET})
    text = f"a\n{SECRET}\nb\nx{SECRET}y\n"
    starts = [0, 2, 3, len(SECRET) + 3, len(SECRET) + 5]  # the 3rd is inside the secret
    out, moved = redactor.text_at(text, starts)
    assert out == redactor.text(text) == f"a\n{LABEL}\nb\nx{LABEL}y\n"
    assert moved == [0, 2, 2, len(LABEL) + 3, len(LABEL) + 5]
    assert Redactor({}).text_at(text, starts) == (text, starts)
