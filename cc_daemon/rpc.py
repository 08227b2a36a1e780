"""JSON-RPC 2.0, to the letter of https://www.jsonrpc.org/specification.

Owns: the method registry (every method declares a JSON Schema for its params and one for
its result), envelope parsing, batches, notifications, params validation, error mapping
and the OpenRPC document served by ``rpc.discover``, generated from the registry.

Must not: know about HTTP beyond saying which status a reply deserves, or about any
service; handlers receive a ``Call`` and return a JSON-serialisable result or raise
``RpcError``. An unexpected exception becomes -32603 with an ``error_id``; its text and
traceback go to the log only.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

log = logging.getLogger("cc_daemon.rpc")

from .errors import (HTTP_STATUS_FOR_CODE, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND,
                     PARSE_ERROR)

_MISSING = object()


class RpcError(Exception):
    """A JSON-RPC error a handler raises on purpose; its message and data reach the client."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


@dataclass(frozen=True)
class ErrorSpec:
    """A domain error a method may return, for the OpenRPC document."""

    code: int
    message: str


@dataclass
class Call:
    """One method invocation as a handler sees it."""

    method: str
    params: dict[str, Any]
    #: Who is calling (set by the transport: identity, transport name, peer ...).
    caller: Any = None
    is_notification: bool = False


Handler = Callable[[Call], Any]


@dataclass
class Method:
    name: str
    handler: Handler
    summary: str
    params: dict[str, Any]
    result: dict[str, Any]
    errors: tuple[ErrorSpec, ...] = ()
    #: Param names in the order by-position params bind to; empty: by-name only.
    positional: tuple[str, ...] = ()

    @cached_property
    def validator(self) -> Draft202012Validator:
        """Built at the first call that needs it. Importing jsonschema costs ~100 ms and ~5 MB,
        most of a cold start; schemas are checked against the meta-schema by the test suite."""
        from jsonschema import Draft202012Validator, FormatChecker

        return Draft202012Validator(self.params, format_checker=FormatChecker())

    def bind(self, raw: Any) -> dict[str, Any]:
        """Turn raw ``params`` (absent, object or array) into a validated dict."""
        if raw is _MISSING:
            params: dict[str, Any] = {}
        elif isinstance(raw, dict):
            params = raw
        else:
            params = self._bind_positional(raw)
        if not params and self.accepts_no_params:
            return params
        from jsonschema.exceptions import best_match  # loaded with the validator

        error = best_match(self.validator.iter_errors(params))
        if error is not None:
            raise invalid_params(error)
        return params

    @cached_property
    def accepts_no_params(self) -> bool:
        """Whether ``{}`` is valid, decided once: many calls (``system.ping``...) carry no params,
        and running the validator costs more than the rest of such a call. For a plain
        ``object_schema`` the answer is read off the schema (valid unless a property is
        required), so that calls without params never need jsonschema loaded."""
        if self.params.get("type") == "object" and set(self.params) <= PLAIN_OBJECT_KEYWORDS:
            return not self.params.get("required")
        return self.validator.is_valid({})

    def _bind_positional(self, values: list[Any]) -> dict[str, Any]:
        if len(values) > len(self.positional):
            expected = list(self.positional)
            raise RpcError(INVALID_PARAMS,
                           f"Invalid params: {self.name} takes at most {len(expected)} positional params",
                           {"positional": expected, "got": len(values)})
        return dict(zip(self.positional, values))


#: Keywords that say nothing about an empty object beyond "is an object" and "required".
PLAIN_OBJECT_KEYWORDS = frozenset({"type", "properties", "additionalProperties", "required"})


def invalid_params(error: ValidationError) -> RpcError:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = next((name for name in error.validator_value if name not in error.instance), None)
        if missing is not None:
            path.append(missing)
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        unexpected = sorted(name for name in error.instance if name not in known)
        if unexpected:
            path.append(unexpected[0])
    field_name = ".".join(str(part) for part in path) or "(params)"
    return RpcError(INVALID_PARAMS, f"Invalid params: {field_name}: {error.message}",
                    {"field": field_name, "reason": error.message, "validator": error.validator})


class Registry:
    """The methods a daemon serves, by name."""

    def __init__(self) -> None:
        #: Service exceptions that mean something to a client, and the error each becomes.
        self._translations: dict[type[Exception], Callable[[Exception], RpcError | None]] = {}
        self._methods: dict[str, Method] = {}
        #: Extra ``data`` of -32601 for a name no method has (why it is left out on purpose).
        self.why_not_served: Callable[[str], dict[str, Any]] = lambda name: {}

    def add(self, method: Method) -> None:
        if method.name in self._methods:
            raise ValueError(f"method {method.name} registered twice")
        self._methods[method.name] = method

    def method(self, name: str, *, summary: str, params: dict[str, Any] | None = None,
               result: dict[str, Any] | None = None, errors: tuple[ErrorSpec, ...] = (),
               positional: tuple[str, ...] | None = None) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler`` as ``name``.

        ``params`` is an object schema; by default by-position params bind to its
        properties in declaration order.
        """
        params_schema = params if params is not None else object_schema({})

        def register(handler: Handler) -> Handler:
            order = positional if positional is not None else tuple(params_schema.get("properties", {}))
            self.add(Method(name, handler, summary, params_schema, result or {}, errors, order))
            return handler

        return register

    def translate(self, exception: type[Exception], to_error: Callable[[Exception], RpcError | None]) -> None:
        """Answer ``exception`` (and its subclasses) escaping any handler with ``to_error(exc)``
        instead of an anonymous internal error (unless it returns None for that instance)."""
        self._translations[exception] = to_error

    def translated(self, exc: Exception) -> RpcError | None:
        for kind in type(exc).__mro__:
            if kind in self._translations and (error := self._translations[kind](exc)) is not None:
                return error
        return None

    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def names(self) -> list[str]:
        return sorted(self._methods)

    def openrpc(self, title: str, version: str, extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
        """An OpenRPC 1.x document describing every registered method."""
        return {
            "openrpc": "1.2.6",
            "info": {"title": title, "version": version, **(extra_info or {})},
            "methods": [describe(self._methods[name]) for name in self.names()],
        }


def describe(method: Method) -> dict[str, Any]:
    properties = method.params.get("properties", {})
    required = set(method.params.get("required", ()))
    names = list(method.positional) + [name for name in properties if name not in method.positional]
    return {
        "name": method.name,
        "summary": method.summary,
        "paramStructure": "either" if method.positional else "by-name",
        "params": [{"name": name, "required": name in required, "schema": properties.get(name, {})}
                   for name in names],
        "result": {"name": "result", "schema": method.result},
        "errors": [{"code": e.code, "message": e.message} for e in method.errors],
        # The whole params object schema, for validators that want it in one piece.
        "x-params-schema": method.params,
    }


def object_schema(properties: dict[str, Any], required: tuple[str, ...] = (),
                  additional: bool = False) -> dict[str, Any]:
    """A params schema: an object with ``properties``; unknown names are refused by default."""
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": additional}
    if required:
        schema["required"] = list(required)
    return schema


@dataclass(frozen=True)
class Reply:
    """What the transport sends back: an HTTP status and a JSON payload (None: no body)."""

    status: int
    payload: Any


class Dispatcher:
    """Turns one HTTP body into a JSON-RPC reply."""

    def __init__(self, registry: Registry, on_call: Callable[[str, int | None], None] | None = None):
        self.registry = registry
        #: Observer for metrics: called with (method, error code or None).
        self._on_call = on_call or (lambda method, code: None)

    def handle(self, body: bytes, caller: Any = None) -> Reply:
        try:
            message = parse_json(body)
        except RpcError as error:
            return Reply(200, error_response(error, None))
        if isinstance(message, list):
            return self._handle_batch(message, caller)
        response = self._handle_one(message, caller)
        if response is None:
            return Reply(204, None)
        code = response.get("error", {}).get("code")
        return Reply(HTTP_STATUS_FOR_CODE.get(code, 200), response)

    def _handle_batch(self, messages: list[Any], caller: Any) -> Reply:
        if not messages:
            return Reply(200, error_response(RpcError(INVALID_REQUEST, "Invalid Request: empty batch"), None))
        responses = [r for r in (self._handle_one(m, caller) for m in messages) if r is not None]
        return Reply(200, responses) if responses else Reply(204, None)

    def _handle_one(self, message: Any, caller: Any) -> dict[str, Any] | None:
        """The response object for one request, or None for a notification."""
        try:
            method_name, raw_params, request_id, is_notification = check_envelope(message)
        except RpcError as error:
            return error_response(error, valid_id_or_none(message))
        try:
            result = self._invoke(method_name, raw_params, caller, is_notification)
        except RpcError as error:
            self._on_call(method_name, error.code)
            return None if is_notification else error_response(error, request_id)
        self._on_call(method_name, None)
        if is_notification:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": request_id}

    def _invoke(self, method_name: str, raw_params: Any, caller: Any, is_notification: bool) -> Any:
        method = self.registry.get(method_name)
        if method is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method_name}",
                           {"method": method_name, **self.registry.why_not_served(method_name)})
        params = method.bind(raw_params)
        try:
            result = method.handler(Call(method_name, params, caller, is_notification))
            # Serialise here so an unencodable result is this call's error, not the batch's.
            check_encodable(result)
            return result
        except RpcError:
            raise
        except Exception as exc:
            translated = self.registry.translated(exc)
            if translated is not None:
                # A refusal the client is told about (unknown session, full queue ...): routine,
                # and a client could make a flood of them. Translations that mean trouble log it.
                log.debug("%s refused: %s", method_name, translated.message)
                raise translated from None
            error_id = secrets.token_hex(6)
            log.exception("internal error in %s (error_id=%s)", method_name, error_id)
            raise RpcError(INTERNAL_ERROR, "Internal error", {"error_id": error_id}) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: ``json.loads`` / ``json.dumps`` with any non-default argument build a new
# decoder / encoder on every call, a cost paid on every request.
_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
check_encodable = json.JSONEncoder(allow_nan=False).encode


def parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):  # what json.loads refuses before decoding
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _decode(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RpcError(PARSE_ERROR, "Parse error: body is not valid UTF-8 JSON",
                       {"reason": str(exc)[:200]}) from None
    except RecursionError:
        raise RpcError(PARSE_ERROR, "Parse error: JSON nested too deeply", {"reason": "nesting"}) from None


def is_valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def valid_id_or_none(message: Any) -> Any:
    if isinstance(message, dict) and is_valid_id(message.get("id")):
        return message.get("id")
    return None


def check_envelope(message: Any) -> tuple[str, Any, Any, bool]:
    """Validate a request object; returns (method, params or _MISSING, id, is_notification)."""
    if not isinstance(message, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON object",
                       {"got": type(message).__name__})
    if message.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be exactly "2.0"', {"field": "jsonrpc"})
    method = message.get("method")
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "method" must be a string', {"field": "method"})
    if "id" in message and not is_valid_id(message["id"]):
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "id" must be a string, a number or null',
                       {"field": "id"})
    params = message.get("params", _MISSING)
    if params is not _MISSING and not isinstance(params, (dict, list)):
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "params" must be an object or an array',
                       {"field": "params"})
    return method, params, message.get("id"), "id" not in message


def error_response(error: RpcError, request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error.to_dict(), "id": request_id}
