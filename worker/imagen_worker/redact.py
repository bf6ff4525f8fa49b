"""Caller-facing error messages: no secrets, no stack traces, bounded length."""

from __future__ import annotations

import os
import re

from .errors import ImagenError

MAX_MESSAGE = 1000

# Environment variables whose values must never appear in a message.
SECRET_ENV = (
    "OPENAI_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "STABILITY_API_KEY",
    "REPLICATE_API_TOKEN",
    "REPLICATE_WEBHOOK_SECRET",
    "MIDJOURNEY_API_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_KEY",
    "IMAGEN_WEBHOOK_SECRET",
    "IMAGEN_URL_SIGNING_KEY",
)

_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),  # OpenAI
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),  # Google
    re.compile(r"\br8_[A-Za-z0-9]{10,}"),  # Replicate
    re.compile(r"\bwhsec_[A-Za-z0-9+/=]{10,}"),  # webhook secrets
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),  # JWTs
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|token|secret|password|authorization)\s*[=:]\s*['\"]?)[^\s'\",&]{6,}"),
    re.compile(r"(?i)([?&](?:key|api_key|token|sig|signature|password|sslpassword)=)[^&\s]+"),
    re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+(@)"),
]


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """`text` with every known secret value and secret-looking token replaced by ***."""
    env = os.environ if environ is None else environ
    for name in SECRET_ENV:
        value = env.get(name)
        if value and len(value) >= 6:
            text = text.replace(value, "***")
    for pattern in _PATTERNS:
        text = pattern.sub(
            lambda m: (
                (m.group(1) if m.groups() else "") + "***" + (m.group(2) if m.lastindex and m.lastindex >= 2 else "")
            ),
            text,
        )
    return text


def caller_message(exc: BaseException) -> str:
    """One line a user can read: our own errors as written, others as `Type: message`, redacted."""
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, ImagenError):
        text = f"{type(exc).__name__}: {text}"
    text = " ".join(redact(text).split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return text
