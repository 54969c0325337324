"""Payloads are canonical JSON; anything else is refused with the path of the offending part."""

from __future__ import annotations

import json
import os
import sys
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from continuum_celery.errors import ContinuumError, InvalidArgument, PayloadError, RunCancelled
from continuum_celery.serialization import (
    MAX_ERROR_MESSAGE,
    check_json,
    dumps,
    encode_error,
    error_matches,
    loads,
    roundtrip,
)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"items": [1, 2, Decimal("3")]}, "input['items'][2] is a decimal.Decimal"),
        ([{"when": date(2026, 1, 1)}], "input[0]['when'] is a datetime.date"),
        ({"tags": {"a", "b"}}, "input['tags'] is a builtins.set"),
        ({1: "one"}, "input has the key 1 of type int; JSON object keys must be str"),
        ({"x": float("inf")}, "input['x'] is inf, which JSON cannot represent"),
        (b"bytes", "input is a builtins.bytes"),
        (object(), "input is a builtins.object"),
    ],
)
def test_a_non_json_value_is_refused_naming_its_path(value: Any, words: str) -> None:
    with pytest.raises(PayloadError) as caught:
        check_json(value, "input")
    assert words in str(caught.value)
    assert "pickles nothing" in str(caught.value) and ".isoformat()" in str(caught.value)
    assert caught.value.fields["what"] == "input"
    assert isinstance(caught.value, (InvalidArgument, TypeError, ValueError))


def test_deep_nesting_is_refused() -> None:
    value: Any = 1
    for _ in range(250):
        value = [value]
    with pytest.raises(PayloadError, match="nested more than 200 levels"):
        check_json(value, "input")


def test_an_oversized_payload_is_refused_with_its_size_and_the_limit() -> None:
    with pytest.raises(PayloadError) as caught:
        check_json({"blob": "é" * 60}, "result of activity x", max_bytes=100)
    assert (
        caught.value.fields["size"] == len(dumps({"blob": "é" * 60}).encode()) and caught.value.fields["limit"] == 100
    )
    assert "result of activity x is" in str(caught.value)


def test_the_canonical_encoding_is_stable() -> None:
    encoded = check_json({"b": [1, 2.5, None, True], "a": "ü"}, "input")
    assert encoded == '{"a":"ü","b":[1,2.5,null,true]}'
    assert dumps({"b": 1, "a": 2}) == dumps({"a": 2, "b": 1})
    assert roundtrip((1, (2, 3))) == [1, [2, 3]]
    assert loads(None) is None and loads(encoded) == {"a": "ü", "b": [1, 2.5, None, True]}
    with pytest.raises(ValueError):
        dumps(float("nan"))


def test_errors_encode_as_json_and_match_by_type() -> None:
    try:
        raise RunCancelled("run r1 was cancelled", run_id="r1")
    except RunCancelled as exc:
        error = encode_error(exc)
    assert error["type"] == "RunCancelled" and error["module"] == "continuum_celery.errors"
    assert error["message"] == "run r1 was cancelled" and "Traceback" in error["traceback"]
    assert json.loads(dumps(error)) == error
    assert error_matches(error, (KeyError, RunCancelled))
    assert not error_matches(error, (ContinuumError,))  # the exact type, not a base class


NON_UTF8 = os.fsdecode(b"caf\xe9")  # a Latin-1 file name as Python decodes it: 'caf\udce9'


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"files": ["ok", NON_UTF8]}, "input['files'][1] holds the lone surrogate '\\udce9' at index 3"),
        ({NON_UTF8: 1}, "input has a key that holds the lone surrogate '\\udce9' at index 3"),
        ("\ud800", "input holds the lone surrogate '\\ud800' at index 0"),
        ([10**4300], "input[0] is an int of more than 4300 digits"),
        ({"n": -(10**5000)}, "input['n'] is an int of more than 4300 digits"),
    ],
)
def test_text_and_ints_json_readers_refuse_are_payload_errors(value: Any, words: str) -> None:
    with pytest.raises(PayloadError) as caught:
        check_json(value, "input")
    assert words in str(caught.value)
    fix = "errors='replace'" if "surrogate" in words else "hex(n)"
    assert fix in str(caught.value)


def test_the_int_limit_is_the_default_one_whatever_this_process_allows() -> None:
    largest = 10**4300 - 1  # 4,300 digits: every reader takes it
    assert json.loads(check_json([largest, -largest], "input")) == [largest, -largest]
    own = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(PayloadError, match=r"input\[0\] is an int of more than 4300 digits"):
            check_json([10**4300], "input")  # this process could write it; a default reader could not load it
    finally:
        sys.set_int_max_str_digits(own)


def test_an_error_payload_is_always_storable_and_readable() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    errors = []
    raised_ones = [
        ValueError(NON_UTF8),
        OSError(2, "No such file", f"/data/{NON_UTF8}"),
        Unprintable(),
        KeyError("x" * 9000),
    ]
    for exc in raised_ones:
        try:
            raise exc
        except Exception as raised:
            errors.append(encode_error(raised))
    for error in errors:
        dumps(error).encode("utf-8")  # what the journal does with it; a lone surrogate would raise here
    assert errors[0]["message"] == "caf\\udce9" and "ValueError: caf\\udce9" in errors[0]["traceback"]
    assert errors[1]["message"] == "[Errno 2] No such file: '/data/caf\\udce9'"
    assert errors[2]["message"].endswith("Unprintable whose str() raised RuntimeError>")
    assert len(errors[3]["message"]) < MAX_ERROR_MESSAGE + 40 and errors[3]["message"].endswith("more characters)")
