"""JSON-RPC 2.0, to the letter of https://www.jsonrpc.org/specification.

Owns: the method registry (every method declares a JSON Schema for its params and one for
its result), envelope parsing, batches, notifications, params validation, error mapping,
the OpenRPC document served by ``rpc.discover``, generated from the registry, and the
limits of one request: ``MAX_BATCH`` requests, ``MAX_REPLY_BYTES`` of responses. Every
value a client sends is checked (``json_values``) before any handler sees it, so a
handler never meets one it cannot carry on to an event, a runtime or a reply.

Must not: know about HTTP beyond saying which status a reply deserves, or about any
service; handlers receive a ``Call`` and return a JSON-serialisable result or raise
``RpcError``. An unexpected exception becomes -32603 with an ``error_id``; its text and
traceback go to the log only.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

from .errors import (HTTP_STATUS_FOR_CODE, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND,
                     PARSE_ERROR, REPLY_TOO_LARGE)
from .json_values import MAX_DEPTH, find_bad_value
from .logs import current_request_id

log = logging.getLogger("cc_daemon.rpc")
_MISSING = object()

#: The most requests one batch may hold. Each one costs a reply of its own, so a 1 MiB body
#: of ``[0,0,...]`` (half a million invalid requests) used to cost a 62.5 MiB reply (RFC 0002 §9.1).
MAX_BATCH = 100
#: The most bytes of results one reply carries: a result that does not fit is replaced by a
#: short -32004 error. Four times the default body limit, so that no single call meets it
#: (the largest, an ``events.query`` page, is 512 KiB plus at most one event of a body's size).
MAX_REPLY_BYTES = 4 << 20
#: How much of a schema's complaint reaches the client: it quotes the offending value, and an
#: error must not echo a 1 MiB string (twice: in ``message`` and in ``data.reason``).
REASON_CHARS = 200


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
        # Before the schema: its error messages quote the value, and its recursion met
        # Python's limit at a nesting of ~980 (issue 12).
        bad = find_bad_value(params)
        if bad is not None:
            raise RpcError(INVALID_PARAMS, f"Invalid params: {bad.field}: {bad.reason}",
                           {"field": bad.field, "reason": bad.reason})
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
    reason = error.message if len(error.message) <= REASON_CHARS else error.message[:REASON_CHARS - 1] + "…"
    return RpcError(INVALID_PARAMS, f"Invalid params: {field_name}: {reason}",
                    {"field": field_name, "reason": reason, "validator": error.validator})


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
        """An OpenRPC 1.x document describing every registered method, and the limits of a request."""
        limits = {"max_batch": MAX_BATCH, "max_reply_bytes": MAX_REPLY_BYTES, "max_params_depth": MAX_DEPTH}
        return {
            "openrpc": "1.2.6",
            "info": {"title": title, "version": version, "x-limits": limits, **(extra_info or {})},
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
    """What the transport sends back: an HTTP status and the JSON body (empty: no body)."""

    status: int
    body: bytes


NO_CONTENT = Reply(204, b"")


@dataclass(frozen=True)
class Response:
    """One response object, encoded, and its error code (None for a result)."""

    body: bytes
    code: int | None = None


class Dispatcher:
    """Turns one HTTP body into a JSON-RPC reply."""

    def __init__(self, registry: Registry, on_call: Callable[[str, int | None, float], None] | None = None):
        self.registry = registry
        #: Observer for metrics: called with (method, error code or None, seconds taken).
        self._on_call = on_call or (lambda method, code, seconds: None)

    def handle(self, body: bytes, caller: Any = None) -> Reply:
        try:
            message = parse_json(body)
        except RpcError as error:
            return Reply(200, error_body(error, None))
        if isinstance(message, list):
            return self._handle_batch(message, caller)
        response = self._handle_one(message, caller, MAX_REPLY_BYTES)
        if response is None:
            return NO_CONTENT
        return Reply(HTTP_STATUS_FOR_CODE.get(response.code, 200), response.body)

    def _handle_batch(self, messages: list[Any], caller: Any) -> Reply:
        if not messages:
            return Reply(200, error_body(RpcError(INVALID_REQUEST, "Invalid Request: empty batch"), None))
        if len(messages) > MAX_BATCH:
            error = RpcError(INVALID_REQUEST, f"Invalid Request: a batch holds at most {MAX_BATCH} requests",
                             {"limit": MAX_BATCH, "got": len(messages)})
            return Reply(200, error_body(error, None))
        bodies: list[bytes] = []
        room = MAX_REPLY_BYTES
        for message in messages:
            response = self._handle_one(message, caller, room)
            if response is not None:
                bodies.append(response.body)
                room -= len(response.body)
        return Reply(200, b"[" + b",".join(bodies) + b"]") if bodies else NO_CONTENT

    def _handle_one(self, message: Any, caller: Any, room: int) -> Response | None:
        """The response to one request, encoded, or None for a notification. A result longer
        than ``room`` is answered with -32004 instead: the call ran, its result is dropped.
        Errors are not measured: they echo at most the request's id, its method's name and
        ``REASON_CHARS`` of a value, all bounded by the body limit."""
        try:
            method_name, raw_params, request_id, is_notification = check_envelope(message)
        except RpcError as error:
            return Response(error_body(error, valid_id_or_none(message)), error.code)
        started = time.perf_counter()
        try:
            body = self._invoke(method_name, raw_params, caller, request_id, is_notification)
            if body is not None and len(body) > room:
                raise RpcError(REPLY_TOO_LARGE, f"Reply too large: the call ran, but its response ({len(body)} "
                                                f"bytes) does not fit in what is left of the reply's "
                                                f"{MAX_REPLY_BYTES} bytes; send it outside a batch, or ask for less",
                               {"limit_bytes": MAX_REPLY_BYTES, "response_bytes": len(body)})
        except RpcError as error:
            self._done(method_name, error.code, started)
            return None if is_notification else Response(error_body(error, request_id), error.code)
        self._done(method_name, None, started)
        return None if body is None else Response(body)

    def _done(self, method_name: str, code: int | None, started: float) -> None:
        """Report a finished call to the metrics and, at debug, to the log (never its params)."""
        seconds = time.perf_counter() - started
        self._on_call(method_name, code, seconds)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("rpc %s %.2f ms %s", self._loggable(method_name), seconds * 1000,
                      "ok" if code is None else f"error {code}")

    def _loggable(self, method_name: str) -> str:
        """A method's name as the log may show it: a client chooses an unknown one, so it is
        not written (it could hold anything, newlines included)."""
        return method_name if self.registry.get(method_name) is not None else "(unknown method)"

    def _invoke(self, method_name: str, raw_params: Any, caller: Any, request_id: Any,
                is_notification: bool) -> bytes | None:
        """Run the method; its response object encoded (None for a notification)."""
        method = self.registry.get(method_name)
        if method is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method_name}",
                           {"method": method_name, **self.registry.why_not_served(method_name)})
        try:
            # Binding too is guarded: whatever it meets, this request gets an answer, and a
            # batch's other requests theirs.
            params = method.bind(raw_params)
            result = method.handler(Call(method_name, params, caller, is_notification))
            # Encoded here: an unencodable result is this call's error, not the batch's.
            return None if is_notification else encode({"jsonrpc": "2.0", "result": result, "id": request_id})
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
            data = {"error_id": error_id}
            request_id = current_request_id()
            if request_id is not None:  # the log line above carries it too (``logs``)
                data["request_id"] = request_id
            raise RpcError(INTERNAL_ERROR, "Internal error", data) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: ``json.loads`` / ``json.dumps`` with any non-default argument build a new
# decoder / encoder on every call, a cost paid on every request. The encoder refuses what
# strict JSON cannot carry, and writes UTF-8 rather than escapes, so that an echo is no
# longer than what was sent (``\u00e9`` is 6 bytes for a 2-byte character).
_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
_encode_text = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode(value: Any) -> bytes:
    """``value`` as strict JSON in UTF-8. No lone surrogate comes in any more (``json_values``),
    but events stored before that was checked may hold one: it is written as the escape it
    came in as (``\\ud800``, which is what ``backslashreplace`` writes inside a JSON string),
    as the event stream writes it, rather than failing every page that holds it."""
    return _encode_text(value).encode("utf-8", "backslashreplace")


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
    """What the specification allows, and what can be echoed: ``1e400`` decodes to ``inf``,
    which strict JSON cannot write (it went out as ``Infinity``)."""
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool)
                             and find_bad_value(value) is None)


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
    if not isinstance(method, str) or find_bad_value(method) is not None:  # an unknown one is echoed
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "method" must be a string of valid Unicode',
                       {"field": "method"})
    if "id" in message and not is_valid_id(message["id"]):
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "id" must be a string of valid Unicode, a finite '
                                        'number or null', {"field": "id"})
    params = message.get("params", _MISSING)
    if params is not _MISSING and not isinstance(params, (dict, list)):
        raise RpcError(INVALID_REQUEST, 'Invalid Request: "params" must be an object or an array',
                       {"field": "params"})
    return method, params, message.get("id"), "id" not in message


def error_body(error: RpcError, request_id: Any) -> bytes:
    return encode({"jsonrpc": "2.0", "error": error.to_dict(), "id": request_id})
