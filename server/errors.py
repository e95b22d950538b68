"""The one error tree: every failure a client can see, with its HTTP status and machine code.

    GatewayError                     500 internal_error
    ├── BadRequest                   400 bad_request / invalid_<field>
    ├── RequestTimeout               408 body_timeout         (a body that stopped arriving)
    ├── PayloadTooLarge              413 body_too_large
    ├── NotFound                     404 not_found
    ├── ModelNotFound                404 model_not_found      (Ollama's 404)
    ├── UpstreamError                502 upstream_error       (Ollama answered with an error)
    │   ├── OllamaUnreachable        502 ollama_unreachable   (connection refused, DNS, reset)
    │   └── (status 503)             503 upstream_busy        (Ollama's own 503, passed on)
    ├── UpstreamTimeout              504 upstream_timeout     (connect or read timeout)
    ├── Unauthorized                 401 unauthorized         (no key, or an unknown one)
    ├── Forbidden                    403 forbidden            (an admin action without admin)
    ├── TooManyRequests              429 too_many_requests    (a user's own limit; Retry-After)
    ├── QueueFull                    503 queue_full           (with Retry-After)
    ├── Cancelled                    409 cancelled            (DELETE /api/chat-queue)
    └── Conflict                     409 conflict             (e.g. a request_id in use)

Lower-level errors (aiohttp's, asyncio's) are translated into this tree in exactly one place,
`server/services/ollama.py`; the error middleware in `server/app.py` renders it as
`{"error": "...", "code": "..."}`. Streams that already started render it as a final SSE frame.
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    # Ollama's own words, where the error came from Ollama: the native API answers with them
    # (the ollama CLI and Continue match "model 'x' not found").
    upstream_text: str | None = None
    upstream_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}

    def copy(self) -> GatewayError:
        """A fresh exception with the same status, code, message and headers (one instance
        raised in several tasks would collect all their tracebacks)."""
        fresh = type(self)(self.message, code=self.code, headers=self.headers, status=self.status)
        fresh.upstream_text, fresh.upstream_status = self.upstream_text, self.upstream_status
        return fresh


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class RequestTimeout(GatewayError):
    status = 408
    code = "body_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "body_too_large"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class ModelNotFound(GatewayError):
    status = 404
    code = "model_not_found"


class UpstreamError(GatewayError):
    status = 502
    code = "upstream_error"


class OllamaUnreachable(UpstreamError):
    code = "ollama_unreachable"


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"


class Unauthorized(GatewayError):
    """No API key, or one the gateway does not know."""

    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    """A key without the admin role asked for an admin action."""

    status = 403
    code = "forbidden"


class TooManyRequests(GatewayError):
    """A user's own limit (requests waiting, or per minute); with Retry-After."""

    status = 429
    code = "too_many_requests"


class QueueFull(GatewayError):
    status = 503
    code = "queue_full"


class Cancelled(GatewayError):
    """The request was cancelled through DELETE /api/chat-queue."""

    status = 409
    code = "cancelled"


class Conflict(GatewayError):
    status = 409
    code = "conflict"
