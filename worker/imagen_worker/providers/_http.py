"""What the providers that speak HTTP themselves (Replicate, Stability, the Midjourney proxy) share:
a request whose timeout or lost connection is retryable, a JSON object body and the status classes
every provider treats alike; and a server's Retry-After, which the SDK providers (OpenAI, Google)
read from their errors' headers too."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Mapping
from typing import Any, NoReturn

import httpx

from ..errors import ProviderRejected, ProviderUnavailable, RateLimited


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `retry-after` (seconds or an HTTP date), else None."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def send(call: Awaitable[httpx.Response], who: str) -> httpx.Response:
    """Await a request; no answer in time or no connection is a retryable ProviderUnavailable."""
    try:
        return await call
    except httpx.TimeoutException:
        raise ProviderUnavailable(f"{who} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"could not reach {who} ({type(exc).__name__})") from None


def json_object(resp: httpx.Response, who: str) -> dict[str, Any]:
    """The answer's JSON object; anything else is a retryable ProviderUnavailable."""
    try:
        body = resp.json()
    except ValueError:
        raise ProviderUnavailable(f"{who} answered {resp.status_code} with a body that is not JSON") from None
    if not isinstance(body, dict):
        raise ProviderUnavailable(f"{who} answered {resp.status_code} with unexpected JSON")
    return body


def raise_for_status(
    resp: httpx.Response,
    who: str,
    detail: str,
    refusals: Mapping[int, str] | None = None,
    *,
    wait: float | None = None,
) -> NoReturn:
    """Raise the error an answer of status >= 300 means: 429 is RateLimited (waiting `wait`, else the
    answer's Retry-After), 5xx and 408 are ProviderUnavailable, any other status ProviderRejected,
    with the provider's own message where `refusals` has one for the status."""
    status = resp.status_code
    if status == 429:
        wait = wait if wait is not None else retry_after(resp.headers)
        raise RateLimited(f"{who} throttled the request (429): {detail}", retry_after=wait)
    if status >= 500 or status == 408:
        raise ProviderUnavailable(f"{who} failed ({status}): {detail}")
    message = (refusals or {}).get(status)
    raise ProviderRejected(message or f"{who} refused the request ({status}): {detail}")
