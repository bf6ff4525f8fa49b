"""Every error a user of imagen-worker can meet, in one hierarchy, each with a message to act on.

`RequestError` and its subclasses are what the service layer (`imagen_worker.service`) raises for a
request it refuses: each carries the HTTP status, a stable code and, where one field is at fault,
that field, so every transport (REST, the kernel transport, the notebook API) reports it the same way.
"""

from __future__ import annotations

import re
from typing import Any


class ImagenError(Exception):
    """Base class of every imagen-worker error."""


class ConfigError(ImagenError):
    """A setting is missing or malformed; the message names the setting and the fix."""


class DatabaseError(ImagenError):
    """The database could not be reached or is not in the expected state."""


class MigrationError(DatabaseError):
    """A migration could not be applied, or an applied one was changed afterwards."""


class SpecError(ImagenError):
    """A job's spec is invalid; the message names the field and the allowed values.

    Messages are one or more `spec.<field>: <what to do>` parts joined by "; " (or `<field>: …` for a
    job column such as `provider` or `model`); `problems` splits them back into (field, text)."""

    _PART = re.compile(r"^(?:spec\.)?([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*): (.*)$", re.DOTALL)

    @property
    def problems(self) -> list[tuple[str | None, str]]:
        out: list[tuple[str | None, str]] = []
        for part in str(self).split("; "):
            match = self._PART.match(part)
            out.append((match.group(1), match.group(2)) if match else (None, part))
        return out


class RequestError(ImagenError):
    """A request the service refuses. `status` is its HTTP status, `code` a stable machine-readable
    name, `field` the request field at fault (if one is), `extra` more members of the error body."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.field = field
        self.extra = extra

    @property
    def message(self) -> str:
        return str(self)

    def as_json(self) -> dict[str, Any]:
        """The one error shape of every transport: {"error": {"code", "message", "field"?}, ...extra}."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error, **self.extra}


class InvalidField(RequestError):
    """A field of the request is missing, of the wrong type or out of range; the message names it and the fix."""

    code = "invalid_field"


class UnknownField(RequestError):
    """The request names a field that does not exist."""

    code = "unknown_field"


class InvalidJSON(RequestError):
    """The request body is not the JSON object the route takes."""

    code = "invalid_json"


class NotFound(RequestError):
    """No object with that id is visible to the caller (another owner's objects are not found either)."""

    status = 404
    code = "not_found"


class JobNotFound(NotFound):
    """No job with that id is visible to the caller."""


class VersionConflict(RequestError):
    """A save carried a version older than the stored one; `current` holds what is stored."""

    status = 409
    code = "version_conflict"


class PayloadTooLarge(RequestError):
    """The request body is over the limit."""

    status = 413
    code = "payload_too_large"


class TooManyPending(RequestError):
    """The owner already has the configured maximum of pending jobs; retry after `retry_after` seconds."""

    status = 429
    code = "too_many_pending"

    def __init__(self, message: str, *, retry_after: float, **extra: Any) -> None:
        super().__init__(message, retry_after=retry_after, **extra)
        self.retry_after = retry_after


class ServiceUnavailable(RequestError):
    """The database (or another backend) cannot be reached now; retry later."""

    status = 503
    code = "unavailable"


class JobError(ImagenError):
    """A job handler failed. Subclasses say whether a retry can help."""

    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryableJobError(JobError):
    """A transient failure (rate limit, 5xx, timeout, lost connection): the job is retried with backoff."""

    retryable = True


class PermanentJobError(JobError):
    """A failure a retry cannot fix (bad request, content policy): the job fails at once."""

    retryable = False


class JobTimeout(PermanentJobError):
    """The job ran past its timeout."""


class ProviderError(JobError):
    """A provider refused or failed a request."""


class RateLimited(ProviderError, RetryableJobError):
    """The provider answered 429; `retry_after` holds its Retry-After in seconds, if it sent one."""


class ProviderUnavailable(ProviderError, RetryableJobError):
    """The provider answered 5xx, timed out, or could not be reached."""


class ProviderRejected(ProviderError, PermanentJobError):
    """The provider rejected the request (bad request, content policy, authentication)."""


class StorageError(JobError):
    """The image store failed to take or give an object: one of the two kinds below."""


class StorageUnavailable(StorageError, RetryableJobError):
    """The store could not answer (5xx, 408, 429, a timeout, unreachable, a transient I/O error):
    the upload is retried, then the job."""


class StorageRejected(StorageError, PermanentJobError):
    """The store refused the request (a wrong key, row-level security, a missing bucket or object,
    a path outside the bucket, no permission): a retry cannot help, so the job fails at once."""


class ImageDataError(PermanentJobError):
    """The bytes a provider returned are not an image we accept (format, size)."""
