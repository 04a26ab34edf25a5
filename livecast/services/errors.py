"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for every route.

A client mistake is never a 500: FastAPI's 422 validation errors, engine ValueErrors and bad
grammars all become 400s naming the offending parameter where one is known.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

logger = logging.getLogger("livecast.server")

# first words of engine / SamplingParams ValueErrors that name a request parameter
_PARAMS = {"n", "best_of", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
           "repetition_penalty", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs", "stop", "seed",
           "prompt", "stop_token_ids", "logit_bias", "beam_width"}
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def bad_request(cls, exc: Exception | str, param: str | None = None) -> "APIError":
        """A 400 from an engine/SamplingParams ValueError, whose message starts with the parameter."""
        message = str(exc)
        if param is None:
            first = message.split(" ", 1)[0]
            param = first if first in _PARAMS else None
        return cls(400, message, param=param)


def overloaded(message: str, retry_after_s: int, code: str = "server_overloaded") -> APIError:
    """A 503 that tells the client when to retry (one setting, `retry_after_s`, for every route)."""
    return APIError(503, message, code=code, headers={"Retry-After": str(retry_after_s)})


def validation_error(errors: list) -> APIError:
    """The first pydantic error as a 400, with its location as the parameter."""
    if not errors:
        return APIError(400, "invalid request")
    err = errors[0]
    loc = [str(part) for part in err.get("loc", ()) if part != "body"]
    if err.get("type") == "json_invalid":
        return APIError(400, f"request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}")
    param = ".".join(loc) or None
    return APIError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: APIError):
        return error_response(exc)

    async def on_validation(request: Request, exc: RequestValidationError | ValidationError):
        return error_response(validation_error(list(exc.errors())))

    async def on_http(request: Request, exc: HTTPException):
        return error_response(APIError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)))

    async def on_unexpected(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, "internal server error", type="server_error"))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def openapi_with_errors(app: FastAPI):
    """The app's OpenAPI document as the server behaves: a bad body is a 400 in OpenAI's error shape
    (never FastAPI's 422), and any route may answer 401/404/405/413/503 the same way."""
    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = FastAPI.openapi(app)
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                if operation.get("requestBody") or operation.get("parameters"):
                    responses.setdefault("400", {"description": "Invalid request", **error})
                if operation.get("requestBody"):
                    responses.setdefault("413", {"description": "Body over --max-body-mb", **error})
                if path not in ("/health", "/metrics"):
                    responses.setdefault("401", {"description": "Missing or wrong API key", **error})
                    responses.setdefault("404", {"description": "Unknown model or object", **error})
                    responses.setdefault("503", {"description": "Overloaded or not running; see Retry-After",
                                                 **error})
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    return openapi
