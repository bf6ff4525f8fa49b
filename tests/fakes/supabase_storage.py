"""A fake Supabase Storage server (aiohttp) that speaks the storage API's object routes.

It answers the way Supabase's storage-api does for what imagen uses, so the real `storage3`
client can be driven against it: the gateway's `apikey` check and Storage's bearer JWT,
multipart uploads with `x-upsert`, the legacy error shape (HTTP 400 with the real status in
the body: `{"statusCode": "404", "error": "not_found", "message": "Object not found"}`),
signed URLs (`POST /object/sign/...` → `{"signedURL": "/object/sign/...?token=<jwt>"}`) that
it then serves, public URLs for public buckets, and a switch to fail the next N uploads with 5xx.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ._server import FakeServer

JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(claims: dict[str, Any], secret: str = JWT_SECRET) -> str:
    """An HS256 JWT, as Supabase signs its API keys and signed-URL tokens."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def decode_jwt(token: str, secret: str = JWT_SECRET) -> dict[str, Any] | None:
    """The claims of a JWT this project signed, else None (expiry is the caller's to check)."""
    try:
        head, body, sig = token.split(".")
        expected = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(sig)):
            return None
        claims = json.loads(_unb64(body))
    except (ValueError, json.JSONDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def api_key(role: str, secret: str = JWT_SECRET) -> str:
    """A project API key for `role` (anon, service_role), shaped like Supabase's."""
    now = int(time.time())
    return encode_jwt(
        {"iss": "supabase", "ref": "fakeproject", "role": role, "iat": now, "exp": now + 10 * 365 * 86400}, secret
    )


@dataclass
class FakeObject:
    data: bytes
    content_type: str
    cache_control: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


@dataclass
class FakeBucket:
    name: str
    public: bool = False
    objects: dict[str, FakeObject] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    status: int
    headers: dict[str, str]


def _error(status: str, error: str, message: str, http_status: int = 400) -> web.Response:
    # Storage answers most errors with HTTP 400 and the real status in the body (a legacy choice).
    return web.json_response({"statusCode": status, "error": error, "message": message}, status=http_status)


def _not_found() -> web.Response:
    return _error("404", "not_found", "Object not found")


class FakeSupabaseStorage(FakeServer):
    """The storage API of one fake project, on 127.0.0.1 and a free port.

    `url` is the project URL (what SUPABASE_URL holds); the API lives under `/storage/v1/`.
    """

    client_max_size = 64 * 1024 * 1024

    def __init__(self, *, jwt_secret: str = JWT_SECRET) -> None:
        super().__init__()
        self.jwt_secret = jwt_secret
        self.service_role_key = api_key("service_role", jwt_secret)
        self.anon_key = api_key("anon", jwt_secret)
        self.buckets: dict[str, FakeBucket] = {}
        self.requests: list[RecordedRequest] = []
        self.clock_offset = 0.0
        self._fail_uploads = 0
        self._fail_status = 503
        self.url = ""

    # -- control -------------------------------------------------------------------------------

    def create_bucket(self, name: str, *, public: bool = False) -> FakeBucket:
        bucket = self.buckets[name] = FakeBucket(name, public)
        return bucket

    def fail_uploads(self, count: int, status: int = 503) -> None:
        """Answer the next `count` uploads with `status` (a 5xx), storing nothing."""
        self._fail_uploads = count
        self._fail_status = status

    def advance(self, seconds: float) -> None:
        """Move the server's clock forward (signed URLs expire by it)."""
        self.clock_offset += seconds

    def now(self) -> float:
        return time.time() + self.clock_offset

    def stored(self, bucket: str, path: str) -> FakeObject | None:
        return self.buckets[bucket].objects.get(path) if bucket in self.buckets else None

    def uploads(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method in ("POST", "PUT") and _is_object_write(r.path)]

    def _routes(self, app: web.Application) -> None:
        prefix = "/storage/v1/object"
        app.router.add_get(prefix + "/public/{bucket}/{path:.+}", self._get_public)
        app.router.add_post(prefix + "/sign/{bucket}/{path:.+}", self._sign)
        app.router.add_get(prefix + "/sign/{bucket}/{path:.+}", self._get_signed)
        app.router.add_get(prefix + "/authenticated/{bucket}/{path:.+}", self._download)
        app.router.add_get(prefix + "/info/{bucket}/{path:.+}", self._info)
        app.router.add_post(prefix + "/{bucket}/{path:.+}", self._upload)
        app.router.add_put(prefix + "/{bucket}/{path:.+}", self._upload)
        app.router.add_get(prefix + "/{bucket}/{path:.+}", self._download)
        app.router.add_delete(prefix + "/{bucket}", self._remove)

    def _middlewares(self) -> list[Any]:
        return [self._record]

    def _started(self, origin: str) -> str:
        self.url = origin
        return origin

    # -- plumbing ------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        keep = ("apikey", "authorization", "content-type", "x-upsert")
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                response.status,
                {k: v for k, v in request.headers.items() if k.lower() in keep},
            )
        )
        return response

    def _auth(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The caller's JWT claims, or the answer the gateway or Storage gives a bad key."""
        key = request.headers.get("apikey")
        if not key:
            return web.json_response(
                {
                    "message": "No API key found in request",
                    "hint": "No `apikey` request header or url param was found.",
                },
                status=401,
            )
        if decode_jwt(key, self.jwt_secret) is None:
            return web.json_response({"message": "Invalid API key"}, status=401)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return _error("403", "Unauthorized", "headers must have required property 'authorization'")
        claims = decode_jwt(auth.removeprefix("Bearer "), self.jwt_secret)
        if claims is None:
            return _error("403", "Unauthorized", "invalid signature")
        return claims

    def _bucket(self, name: str) -> FakeBucket | web.Response:
        bucket = self.buckets.get(name)
        if bucket is None:
            return _error("404", "Bucket not found", "Bucket not found")
        return bucket

    # -- routes --------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        claims = self._auth(request)
        if isinstance(claims, web.Response):
            return claims
        if self._fail_uploads > 0:
            self._fail_uploads -= 1
            status = self._fail_status
            return _error(str(status), "internal", "Service temporarily unavailable", http_status=status)
        bucket = self._bucket(request.match_info["bucket"])
        if isinstance(bucket, web.Response):
            return bucket
        if claims.get("role") != "service_role":
            return _error("403", "Unauthorized", "new row violates row-level security policy")
        path = request.match_info["path"]
        cache_control = "no-cache"
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            upload = form.get("file")
            if not isinstance(upload, web.FileField):
                return _error("400", "InvalidRequest", "The file field is missing from the form")
            data = upload.file.read()
            content_type = upload.content_type
            cache_control = f"max-age={form.get('cacheControl', '3600')}"
        else:
            data = await request.read()
            content_type = request.content_type
            cache_control = request.headers.get("cache-control", cache_control)
        existing = bucket.objects.get(path)
        if request.method == "POST" and existing is not None and request.headers.get("x-upsert") != "true":
            return _error("409", "Duplicate", "The resource already exists")
        if request.method == "PUT" and existing is None:
            return _not_found()
        obj = FakeObject(data, content_type, cache_control)
        if existing is not None:
            obj.id, obj.created_at = existing.id, existing.created_at
        bucket.objects[path] = obj
        return web.json_response({"Id": obj.id, "Key": f"{bucket.name}/{path}"})

    async def _download(self, request: web.Request) -> web.Response:
        claims = self._auth(request)
        if isinstance(claims, web.Response):
            return claims
        bucket = self._bucket(request.match_info["bucket"])
        if isinstance(bucket, web.Response):
            return bucket
        obj = bucket.objects.get(request.match_info["path"])
        # Row-level security hides a private bucket's objects from anyone but the service role.
        if obj is None or (claims.get("role") != "service_role" and not bucket.public):
            return _not_found()
        return _serve(obj)

    async def _info(self, request: web.Request) -> web.Response:
        claims = self._auth(request)
        if isinstance(claims, web.Response):
            return claims
        obj = self.stored(request.match_info["bucket"], request.match_info["path"])
        if obj is None:
            return _not_found()
        return web.json_response(
            {"id": obj.id, "name": request.match_info["path"], "size": len(obj.data), "content_type": obj.content_type}
        )

    async def _remove(self, request: web.Request) -> web.Response:
        claims = self._auth(request)
        if isinstance(claims, web.Response):
            return claims
        bucket = self._bucket(request.match_info["bucket"])
        if isinstance(bucket, web.Response):
            return bucket
        body = await request.json()
        prefixes = body.get("prefixes") if isinstance(body, dict) else None
        if not isinstance(prefixes, list) or not prefixes:
            return _error("400", "InvalidRequest", "body must have required property 'prefixes'")
        removed = []
        for path in prefixes:
            obj = bucket.objects.pop(path, None)
            if obj is not None:
                removed.append({"name": path, "bucket_id": bucket.name, "id": obj.id})
        return web.json_response(removed)

    async def _sign(self, request: web.Request) -> web.Response:
        claims = self._auth(request)
        if isinstance(claims, web.Response):
            return claims
        bucket = self._bucket(request.match_info["bucket"])
        if isinstance(bucket, web.Response):
            return bucket
        path = request.match_info["path"]
        if path not in bucket.objects:
            return _not_found()
        body = await request.json()
        try:
            expires_in = int(body["expiresIn"])
        except (KeyError, TypeError, ValueError):
            return _error("400", "InvalidRequest", "body must have required property 'expiresIn'")
        now = int(self.now())
        token = encode_jwt({"url": f"{bucket.name}/{path}", "iat": now, "exp": now + expires_in}, self.jwt_secret)
        return web.json_response({"signedURL": f"/object/sign/{quote(bucket.name)}/{quote(path)}?token={token}"})

    async def _get_signed(self, request: web.Request) -> web.Response:
        token = request.query.get("token")
        if not token:
            return _error("400", "InvalidJWT", "querystring must have required property 'token'")
        claims = decode_jwt(token, self.jwt_secret)
        if claims is None:
            return _error("400", "InvalidJWT", "invalid signature")
        if float(claims.get("exp", 0)) <= self.now():
            return _error("400", "InvalidJWT", "jwt expired")
        wanted = f"{request.match_info['bucket']}/{request.match_info['path']}"
        if claims.get("url") != wanted:
            return _error("400", "InvalidSignature", "The url do not match the signature")
        obj = self.stored(request.match_info["bucket"], request.match_info["path"])
        return _not_found() if obj is None else _serve(obj)

    async def _get_public(self, request: web.Request) -> web.Response:
        bucket = self.buckets.get(request.match_info["bucket"])
        if bucket is None or not bucket.public:
            return _error("404", "Bucket not found", "Bucket not found")
        obj = bucket.objects.get(request.match_info["path"])
        return _not_found() if obj is None else _serve(obj)


def _serve(obj: FakeObject) -> web.Response:
    return web.Response(
        body=obj.data,
        headers={"Content-Type": obj.content_type, "Cache-Control": obj.cache_control, "ETag": f'"{obj.id}"'},
    )


def _is_object_write(path: str) -> bool:
    rest = path.removeprefix("/storage/v1/object/")
    return rest != path and not rest.startswith(("sign/", "public/", "authenticated/", "info/"))
