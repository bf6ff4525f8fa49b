"""Google image models through `google-genai`'s `generate_content`: Imagen on Vertex AI and Gemini image
output (Gemini API key or Vertex AI), every SDK error classified.

Imagen goes through `generate_content` too, the call google-genai recommends since it deprecated
`generate_images` (removal not before 2027-01-01): the prompt as the one user part, IMAGE as the only
response modality, the aspect ratio, size, person generation and PNG output in `imageConfig`, the seed
in `generationConfig.seed`. That call has no negative prompt, and no switch for Imagen's SynthID
watermark; a negative prompt for an Imagen model is refused, naming the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import aiohttp
import google.auth.credentials
import google.auth.exceptions
import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..errors import JobError, ProviderRejected, ProviderUnavailable, RateLimited, SpecError
from ..images import guess_content_type
from ..spec import ImagePromptSpec
from . import _http
from .base import Capabilities, GeneratedImage, GenerationRequest, Provider, ProviderResult

if TYPE_CHECKING:
    from ..queue import JobContext

# The pixel sizes each aspect ratio yields (Imagen 1K; Gemini 2.5 Flash Image), so spec.size can name them.
IMAGEN_SIZES = {"1024x1024": "1:1", "896x1280": "3:4", "1280x896": "4:3", "768x1408": "9:16", "1408x768": "16:9"}
GEMINI_SIZES = {
    "1024x1024": "1:1",
    "832x1248": "2:3",
    "1248x832": "3:2",
    "864x1184": "3:4",
    "1184x864": "4:3",
    "896x1152": "4:5",
    "1152x896": "5:4",
    "768x1344": "9:16",
    "1344x768": "16:9",
    "1536x672": "21:9",
}


def _imagen(price: str) -> Capabilities:
    return Capabilities(
        sizes=tuple(IMAGEN_SIZES),
        aspect_ratios=tuple(IMAGEN_SIZES.values()),
        seed=True,
        max_side=2816,
        price_usd=Decimal(price),
    )


def _gemini(price: str) -> Capabilities:
    return Capabilities(
        sizes=tuple(GEMINI_SIZES),
        aspect_ratios=tuple(GEMINI_SIZES.values()),
        seed=True,
        edit=True,
        max_side=1536,
        price_usd=Decimal(price),
    )


# spec.options per model family, with the values allowed: both go to generate_content's imageConfig, whose
# personGeneration takes ALLOW_NONE, ALLOW_ADULT or ALLOW_ALL. The SDK sends person_generation only on
# Vertex AI (in Gemini API mode it raises), so check() refuses it for Gemini there before any call.
IMAGEN_OPTIONS: dict[str, tuple[str, ...]] = {"person_generation": ("allow_none", "allow_adult", "allow_all")}
IMAGEN_4_OPTIONS: dict[str, tuple[str, ...]] = {**IMAGEN_OPTIONS, "image_size": ("1K", "2K")}
GEMINI_OPTIONS: dict[str, tuple[str, ...]] = {"person_generation": ("allow_none", "allow_adult", "allow_all")}

# Finish reasons meaning "a safety or policy filter removed the image": the user must change the prompt.
BLOCKED_FINISH = {
    "SAFETY",
    "IMAGE_SAFETY",
    "PROHIBITED_CONTENT",
    "IMAGE_PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_RECITATION",
    "MODEL_ARMOR",
}
_RAI_MESSAGE = re.compile(r"(?i)responsible ai|safety|prohibited|usage guidelines|sensitive words")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)s\s*$")

Mode = Literal["vertex", "api_key"]
T = TypeVar("T")


class GoogleProvider(Provider):
    """`provider="google"`. Imagen runs on Vertex AI (GOOGLE_CLOUD_PROJECT, GOOGLE_CLOUD_LOCATION, Application
    Default Credentials); Gemini image models use GOOGLE_API_KEY when set, else Vertex AI. GOOGLE_BASE_URL (or
    `base_url`) points both at another endpoint."""

    name = "google"
    models: ClassVar[dict[str, Capabilities]] = {
        "imagen-3.0-generate-001": _imagen("0.04"),
        "imagen-3.0-generate-002": _imagen("0.03"),
        "imagen-3.0-fast-generate-001": _imagen("0.02"),
        "imagen-4.0-generate-001": _imagen("0.04"),
        "imagen-4.0-ultra-generate-001": _imagen("0.06"),
        "imagen-4.0-fast-generate-001": _imagen("0.02"),
        "gemini-2.5-flash-image": _gemini("0.039"),
    }

    def __init__(
        self,
        api_key: str | None = None,
        *,
        project: str | None = None,
        location: str | None = None,
        credentials: google.auth.credentials.Credentials | None = None,
        base_url: str | None = None,
        max_retries: int = 2,
        retry_initial_delay: float = 1.0,
        timeout: float = 180.0,
    ) -> None:
        self._api_key = (
            api_key
            if api_key is not None
            else os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY") or None
        )
        self._project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        self._location = location or os.environ.get("GOOGLE_CLOUD_LOCATION") or "us-central1"
        self._credentials = credentials
        self._base_url = base_url or os.environ.get("GOOGLE_BASE_URL") or None
        self._retry = types.HttpRetryOptions(
            attempts=max_retries + 1,
            initial_delay=retry_initial_delay,
            max_delay=max(retry_initial_delay, 8.0),
            jitter=retry_initial_delay,
            http_status_codes=[408, 429, 500, 502, 503, 504],
        )
        self._timeout = timeout
        self._clients: dict[Mode, genai.Client] = {}

    # -- validation -----------------------------------------------------------------------------

    def check(self, spec: ImagePromptSpec, model: str) -> None:
        self.capabilities(model)  # an unknown model: nothing else can be checked
        problems: list[str] = []
        try:
            super().check(spec, model)
        except SpecError as exc:
            problems.append(str(exc))
        where = f"{self.name}/{model}"
        allowed = _options(model)
        for key, value in spec.options.items():
            if key not in allowed:
                choices = ", ".join(allowed) or "none (leave options empty)"
                problems.append(f"spec.options.{key}: not an option of {where}; the options are {choices}")
            elif value not in allowed[key]:
                problems.append(
                    f"spec.options.{key}: {value!r} is not offered by {where}; use one of {', '.join(allowed[key])}"
                )
            elif key == "person_generation" and _is_gemini(model) and self._gemini_mode() == "api_key":
                problems.append(
                    f"spec.options.person_generation: {where} takes it only on Vertex AI, and this worker reaches "
                    "Gemini with GOOGLE_API_KEY; leave it unset"
                )
        if spec.negative_prompt and not _is_gemini(model):
            problems.append(
                f"spec.negative_prompt: {where} takes no negative prompt through generate_content, the call "
                "google-genai recommends for Imagen; leave it unset and describe in the prompt what the image shows"
            )
        if problems:
            raise SpecError("; ".join(problems))

    # -- generation -----------------------------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        if self._api_key or self._project:
            return None
        return "neither GOOGLE_API_KEY (Gemini API) nor GOOGLE_CLOUD_PROJECT (Vertex AI) is set"

    async def generate(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        if _is_gemini(request.model):
            return await self._gemini(request, ctx)
        return await self._imagen(request, ctx)

    async def _sdk(self, model: str, call: Awaitable[T]) -> T:
        """Await one SDK call, turning what it raises into a classified job error."""
        try:
            return await call
        except Exception as exc:
            classified = self._classify(exc, model)
            if classified is None:
                raise
            raise classified from exc

    async def _imagen(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        spec, model = request.spec, request.model
        image_config = types.ImageConfig(
            aspect_ratio=_aspect_ratio(request, IMAGEN_SIZES), output_mime_type="image/png"
        )
        if "person_generation" in spec.options:
            image_config.person_generation = str(spec.options["person_generation"]).upper()
        if "image_size" in spec.options:
            image_config.image_size = str(spec.options["image_size"])
        config = types.GenerateContentConfig(
            response_modalities=["IMAGE"], candidate_count=1, image_config=image_config, seed=spec.seed
        )
        client = self._client("vertex", model)
        contents = [types.Content(role="user", parts=[types.Part.from_text(text=request.prompt)])]
        response = await self._sdk(
            model, client.aio.models.generate_content(model=model, contents=contents, config=config)
        )
        return await self._answer(response, model, spec, ctx)

    async def _gemini(self, request: GenerationRequest, ctx: JobContext) -> ProviderResult:
        spec, model = request.spec, request.model
        mode = self._gemini_mode()
        if mode is None:
            raise ProviderRejected(
                f"{self.name}/{model}: no credentials; set GOOGLE_API_KEY (Gemini API) or GOOGLE_CLOUD_PROJECT "
                "(Vertex AI) in the worker's environment"
            )
        parts = [types.Part.from_text(text=request.prompt)]
        if request.previous_image is not None:
            parts.append(
                types.Part.from_bytes(
                    data=request.previous_image, mime_type=guess_content_type(request.previous_image, "image/png")
                )
            )
        image_config = types.ImageConfig(aspect_ratio=_aspect_ratio(request, GEMINI_SIZES))
        if "person_generation" in spec.options:
            image_config.person_generation = str(spec.options["person_generation"]).upper()
        config = types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            candidate_count=1,
            image_config=image_config,
            seed=spec.seed,
        )
        client = self._client(mode, model)
        contents = [types.Content(role="user", parts=parts)]
        response = await self._sdk(
            model, client.aio.models.generate_content(model=model, contents=contents, config=config)
        )
        return await self._answer(response, model, spec, ctx)

    async def _answer(
        self, response: types.GenerateContentResponse, model: str, spec: ImagePromptSpec, ctx: JobContext
    ) -> ProviderResult:
        """The image of a generate_content answer, or the job error that says why there is none."""
        usage = _usage(response.usage_metadata)
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            why = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
            raise ProviderRejected(
                f"{self.name}/{model} blocked the prompt ({_enum(feedback.block_reason)}); change the prompt{why}"
            )
        candidate = response.candidates[0] if response.candidates else None
        texts: list[str] = []
        image: bytes | None = None
        for part in (candidate.content.parts or []) if candidate is not None and candidate.content else []:
            if part.thought:
                continue  # interim "thinking" images and text are not the answer
            blob = part.inline_data
            if image is None and blob is not None and blob.data and (blob.mime_type or "").startswith("image/"):
                image = blob.data
            elif part.text:
                texts.append(part.text)
        if texts:
            await ctx.event("log", {"model_text": " ".join(texts)[:1000]})
        if image is not None:
            return ProviderResult(GeneratedImage(image, seed=spec.seed), usage=usage)
        finish = _enum(candidate.finish_reason) if candidate is not None and candidate.finish_reason else "none"
        message = (candidate.finish_message if candidate is not None else None) or " ".join(texts)[:500]
        detail = f": {message}" if message else ""
        if finish in BLOCKED_FINISH:
            raise ProviderRejected(
                f"{self.name}/{model} returned no image: blocked ({finish}); change the prompt{detail}"
            )
        if finish in ("STOP", "NO_IMAGE"):
            raise ProviderRejected(f"{self.name}/{model} answered without an image (finish reason {finish}){detail}")
        raise ProviderUnavailable(f"{self.name}/{model} answered without an image (finish reason {finish}){detail}")

    # -- clients --------------------------------------------------------------------------------

    def _gemini_mode(self) -> Mode | None:
        if self._api_key:
            return "api_key"
        if self._project:
            return "vertex"
        return None

    def _client(self, mode: Mode, model: str) -> genai.Client:
        client = self._clients.get(mode)
        if client is not None:
            return client
        http_options = types.HttpOptions(
            base_url=self._base_url, retry_options=self._retry, timeout=int(self._timeout * 1000)
        )
        # Checked here, not at start-up, so the other mode's models still run without these settings.
        if mode == "vertex" and not self._project:
            raise ProviderRejected(
                f"{self.name}/{model} runs on Vertex AI; set GOOGLE_CLOUD_PROJECT (and GOOGLE_CLOUD_LOCATION, "
                "default us-central1) and Application Default Credentials for the worker"
            )
        try:
            if mode == "vertex":
                client = genai.Client(
                    vertexai=True,
                    project=self._project,
                    location=self._location,
                    credentials=self._credentials,
                    http_options=http_options,
                )
            else:
                client = genai.Client(vertexai=False, api_key=self._api_key, http_options=http_options)
        except ValueError as exc:
            raise ProviderRejected(
                self._scrub(f"{self.name}/{model}: google-genai refused the settings: {exc}")
            ) from None
        self._clients[mode] = client
        return client

    async def aclose(self) -> None:
        """Close the SDK clients' HTTP sessions."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aio.aclose()
            client.close()

    # -- errors ---------------------------------------------------------------------------------

    def _classify(self, exc: Exception, model: str) -> JobError | None:
        """An SDK or transport error as a retryable or permanent job error; None when it is not one of ours."""
        where = f"{self.name}/{model}"
        if isinstance(exc, genai_errors.APIError):
            code = int(exc.code or 0)
            status = exc.status or ""
            message = self._scrub(str(exc.message or status or "no message"))
            label = f"{code} {status}".strip()
            if code == 429:
                return RateLimited(
                    f"{where}: rate limited by Google ({label}): {message}", retry_after=_retry_after(exc)
                )
            if code >= 500 or code == 408:
                return ProviderUnavailable(f"{where}: Google failed ({label}): {message}")
            if code == 400 and _RAI_MESSAGE.search(message):
                return ProviderRejected(
                    f"{where}: refused under Google's Responsible AI policy; change the prompt: {message}"
                )
            if code in (401, 403) or _error_reason(exc) == "API_KEY_INVALID":
                hint = (
                    "check GOOGLE_API_KEY"
                    if self._gemini_mode() == "api_key" and _is_gemini(model)
                    else "check the Vertex AI credentials and that the project may use the model"
                )
                return ProviderRejected(f"{where}: Google did not accept the credentials ({label}); {hint}: {message}")
            if code == 404:
                return ProviderRejected(f"{where}: model or route not found ({label}): {message}")
            return ProviderRejected(f"{where}: Google rejected the request ({label}): {message}")
        if isinstance(exc, google.auth.exceptions.TransportError):
            return ProviderUnavailable(f"{where}: could not refresh Google credentials ({type(exc).__name__})")
        if isinstance(exc, google.auth.exceptions.GoogleAuthError):
            return ProviderRejected(
                self._scrub(f"{where}: no usable Google credentials ({exc}); set up Application Default Credentials")
            )
        if isinstance(exc, TimeoutError):
            return ProviderUnavailable(f"{where}: the request timed out after {self._timeout:g} s")
        if isinstance(exc, aiohttp.ClientError | httpx.TransportError | ConnectionError):
            return ProviderUnavailable(f"{where}: could not reach Google ({type(exc).__name__})")
        if isinstance(exc, ValueError | RuntimeError):
            # The SDK's own refusals (a parameter its mode does not take, no token): a retry cannot help.
            return ProviderRejected(self._scrub(f"{where}: google-genai refused the request: {exc}"))
        return None

    def _scrub(self, text: str) -> str:
        """Never let the key reach a message, even if a server or proxy echoes it."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text


def _is_gemini(model: str) -> bool:
    return model.startswith("gemini-")


def _options(model: str) -> dict[str, tuple[str, ...]]:
    if _is_gemini(model):
        return GEMINI_OPTIONS
    if model.startswith("imagen-4.0-") and "fast" not in model:
        return IMAGEN_4_OPTIONS
    return IMAGEN_OPTIONS


def _aspect_ratio(request: GenerationRequest, sizes: dict[str, str]) -> str | None:
    if request.width and request.height:
        return sizes.get(f"{request.width}x{request.height}")
    return request.spec.aspect_ratio


def _enum(value: Any) -> str:
    return str(getattr(value, "value", value))


def _usage(meta: types.GenerateContentResponseUsageMetadata | None) -> dict[str, Any]:
    usage: dict[str, Any] = {"images": 1}
    if meta is not None:
        usage.update(
            prompt_tokens=meta.prompt_token_count,
            output_tokens=meta.candidates_token_count,
            total_tokens=meta.total_token_count,
        )
    return usage


def _error_reason(exc: genai_errors.APIError) -> str | None:
    """The google.rpc.ErrorInfo reason in the error's details (e.g. API_KEY_INVALID), if any."""
    for detail in _details(exc):
        if str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason"))
    return None


def _retry_after(exc: genai_errors.APIError) -> float | None:
    """The server's wait: a Retry-After header, else the google.rpc.RetryInfo retryDelay ("17s")."""
    headers = getattr(exc.response, "headers", None)
    wait = _http.retry_after(headers) if headers is not None else None
    if wait is not None:
        return wait
    for detail in _details(exc):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _details(exc: genai_errors.APIError) -> list[dict[str, Any]]:
    body = exc.details if isinstance(exc.details, dict) else {}
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
