"""The HTTP providers' shared answers: Retry-After in its three spellings, and one status classification."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from imagen_worker.errors import ProviderRejected, ProviderUnavailable, RateLimited
from imagen_worker.providers._http import json_object, raise_for_status, retry_after


def test_retry_after_reads_milliseconds_then_seconds_then_an_http_date() -> None:
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "7"}) == 7.0
    in_30_s = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = retry_after({"retry-after": in_30_s})
    assert wait is not None and 28 <= wait <= 30
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
    assert retry_after({"retry-after": "-5"}) == 0.0


def answer(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("GET", "https://api.example/x"))


def test_a_429_is_rate_limited_with_the_servers_wait_unless_the_provider_knows_better() -> None:
    with pytest.raises(RateLimited, match=r"^Acme throttled the request \(429\): slow down$") as err:
        raise_for_status(answer(429, **{"retry-after": "12"}), "Acme", "slow down")
    assert err.value.retry_after == 12.0 and err.value.retryable
    with pytest.raises(RateLimited) as err:
        raise_for_status(answer(429), "Acme", "throttled for 3 s", wait=3.0)
    assert err.value.retry_after == 3.0


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_server_failures_and_request_timeouts_are_retryable(status: int) -> None:
    with pytest.raises(ProviderUnavailable, match=rf"^Acme failed \({status}\): boom$") as err:
        raise_for_status(answer(status), "Acme", "boom", {status: "never used"})
    assert err.value.retryable


def test_other_statuses_are_refusals_in_the_providers_own_words_where_it_has_them() -> None:
    with pytest.raises(ProviderRejected, match=r"^check ACME_KEY$") as err:
        raise_for_status(answer(401), "Acme", "bad key", {401: "check ACME_KEY"})
    assert not err.value.retryable
    with pytest.raises(ProviderRejected, match=r"^Acme refused the request \(418\): \{teapot\}$"):
        raise_for_status(answer(418), "Acme", "{teapot}", {401: "check ACME_KEY"})


def test_json_object_refuses_what_is_not_a_json_object() -> None:
    assert json_object(httpx.Response(200, json={"id": "p1"}), "Acme") == {"id": "p1"}
    with pytest.raises(ProviderUnavailable, match="Acme answered 200 with a body that is not JSON"):
        json_object(httpx.Response(200, text="<html>"), "Acme")
    with pytest.raises(ProviderUnavailable, match="Acme answered 200 with unexpected JSON"):
        json_object(httpx.Response(200, json=[1, 2]), "Acme")
