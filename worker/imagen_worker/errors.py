"""Every error a user of imagen-worker can meet, in one hierarchy, each with a message to act on."""

from __future__ import annotations


class ImagenError(Exception):
    """Base class of every imagen-worker error."""


class ConfigError(ImagenError):
    """A setting is missing or malformed; the message names the setting and the fix."""


class DatabaseError(ImagenError):
    """The database could not be reached or is not in the expected state."""


class MigrationError(DatabaseError):
    """A migration could not be applied, or an applied one was changed afterwards."""


class SpecError(ImagenError):
    """A job's spec is invalid; the message names the field and the allowed values."""


class JobNotFound(ImagenError):
    """No job with that id is visible to the caller."""


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
