"""Spec validation messages, secret redaction, backoff, and the named-query loader."""

from __future__ import annotations

import pytest

from imagen_worker.errors import PermanentJobError, SpecError
from imagen_worker.queries import parse_queries, queries
from imagen_worker.queue import backoff_seconds
from imagen_worker.redact import caller_message, redact
from imagen_worker.spec import ImagePromptSpec, parse_spec


def test_valid_spec_stores_everything_but_the_prompt() -> None:
    spec = parse_spec({"prompt": "a fox", "size": "640x480", "seed": 3, "style_modifiers": ["ink"]})
    assert spec.dimensions == (640, 480)
    assert spec.stored_spec() == {"size": "640x480", "seed": 3, "style_modifiers": ["ink"]}
    assert ImagePromptSpec.from_job("a fox", spec.stored_spec()) == spec


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"prompt": "   "}, "spec.prompt: prompt is blank"),
        ({"prompt": "x", "size": "1024"}, "spec.size: '1024' must look like 1024x1024"),
        ({"prompt": "x", "aspect_ratio": "wide"}, "spec.aspect_ratio: 'wide' must look like 16:9"),
        (
            {"prompt": "x", "quality": "ultra"},
            "spec.quality: must be one of 'auto', 'low', 'medium', 'high', 'standard' or 'hd'",
        ),
        ({"prompt": "x", "seed": -1}, "spec.seed:"),
        ({"prompt": "x", "n": 4}, "spec.n: a job makes one image"),
        ({"prompt": "x", "colour": "red"}, "spec.colour: is not a spec field; the fields are prompt,"),
    ],
)
def test_invalid_spec_names_the_field_and_the_fix(data: dict[str, object], expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert expected in str(err.value)


def test_spec_from_a_job_refuses_a_prompt_inside_spec() -> None:
    with pytest.raises(SpecError, match=r"spec\.prompt: the prompt belongs in the job.s prompt column"):
        ImagePromptSpec.from_job("a fox", {"prompt": "another"})


def test_redact_removes_known_secret_values_and_secret_shapes() -> None:
    env = {"STABILITY_API_KEY": "stab-0123456789abcdef"}
    text = (
        "key stab-0123456789abcdef failed; openai sk-abcdefghijklmnop; google AIzaSyA1234567890abcdefghij; "
        "Authorization: Bearer abc.def.ghi123; url https://x/y?key=supersecret&a=1; "
        "db postgresql://user:hunter2@db:5432/x; other postgresql://u@db/x?sslmode=require&password=pw1"
    )
    out = redact(text, env)
    for secret in (
        "stab-0123456789abcdef",
        "sk-abcdefghijklmnop",
        "AIzaSyA1234567890abcdefghij",
        "abc.def.ghi123",
        "supersecret",
        "hunter2",
        "pw1",
    ):
        assert secret not in out
    assert "postgresql://user:***@db:5432/x" in out
    assert "?key=***&a=1" in out


def test_caller_message_is_one_bounded_line() -> None:
    assert caller_message(PermanentJobError("refused:\n  content policy")) == "refused: content policy"
    assert caller_message(ValueError("x" * 5000)).endswith("…")
    assert len(caller_message(ValueError("x" * 5000))) == 1000
    assert caller_message(TimeoutError()) == "TimeoutError: TimeoutError"


def test_backoff_grows_exponentially_is_capped_and_honours_retry_after() -> None:
    first = [backoff_seconds(1, 2.0, 300.0) for _ in range(50)]
    third = [backoff_seconds(3, 2.0, 300.0) for _ in range(50)]
    assert min(first) >= 1.5 and max(first) <= 2.5
    assert min(third) >= 6.0 and max(third) <= 10.0
    assert max(backoff_seconds(30, 2.0, 300.0) for _ in range(50)) <= 375.0
    assert backoff_seconds(1, 0.1, 300.0, retry_after=12.0) == 12.0
    assert backoff_seconds(1, 0.1, 60.0, retry_after=1e6) == 60.0


def test_named_queries_parse_and_every_query_is_named_once() -> None:
    parsed = parse_queries("-- header\n-- name: a\nselect 1;\n-- name: b\nselect 2\n")
    assert parsed == {"a": "select 1", "b": "select 2"}
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\nselect 1\n-- name: a\nselect 2\n")
    assert {"claim_jobs", "renew_leases", "reap_expired_leases", "fail_job", "release_jobs"} <= set(queries())
