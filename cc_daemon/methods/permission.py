"""``permission.*``: answering, refreshing and listing permission requests (originator only)."""

from __future__ import annotations

from ..errors import INVALID_PARAMS, NOT_ORIGINATOR, UNKNOWN_REQUEST
from ..permissions import (INTERACTIVE_TIMEOUT_S, MAX_LIFETIME_S, AlreadyResolved, NotTheOriginator,
                           PermissionRequest)
from ..rpc import Call, ErrorSpec, Registry, RpcError, object_schema
from ..refused import Refused
from . import MethodContext, translate_refusals

REQUEST_ID = {"type": "string", "minLength": 1, "maxLength": 64, "description": "pr_<16 hex>"}
ANSWER = object_schema({
    "approve": {"type": "boolean"},
    "reason": {"type": "string", "maxLength": 2000},
    "remember": {"type": "boolean"},
}, ("approve",))
SUMMARY = {"type": "object", "required": ["request_id", "tool", "input", "rationale", "expires_at"]}
ORIGINATOR_ERRORS = (ErrorSpec(NOT_ORIGINATOR, "no request of the caller's has this id: another client's, or none "
                                                "(HTTP 403; the same answer, so ids cannot be probed)"),
                     ErrorSpec(UNKNOWN_REQUEST, "the caller's request is already resolved (data.state says how)"))
#: The code each refusal of the permission service is answered with (RFC 0001 §2).
REFUSALS: dict[type[Refused], int] = {NotTheOriginator: NOT_ORIGINATOR, AlreadyResolved: UNKNOWN_REQUEST}


def register(registry: Registry, context: MethodContext) -> None:
    permissions = context.permissions
    translate_refusals(registry, REFUSALS)

    @registry.method(
        "permission.demo",
        summary="Create a permission request originated by the caller (for trying the flow end to end).",
        params=object_schema({
            "tool": {"type": "string", "minLength": 1, "maxLength": 200, "default": "Bash"},
            "input": {"type": "object", "default": {}},
            "rationale": {"type": ["string", "null"], "maxLength": 10000},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LIFETIME_S,
                          "default": INTERACTIVE_TIMEOUT_S},
            "originator": {"type": "string", "description": "accepted only when it is the caller's own id"},
        }),
        result=object_schema({"request_id": REQUEST_ID, "originator": {"type": "string"},
                              "expires_at": {"type": "number"}}, ("request_id", "originator", "expires_at")))
    def demo(call: Call) -> dict:
        params, caller = call.params, call.caller
        if params.get("originator", caller.client_id) != caller.client_id:
            raise RpcError(INVALID_PARAMS, "Invalid params: originator: the originator is always the caller",
                           {"field": "originator", "reason": "naming another client is not allowed"})
        context.clients.confirm(caller)
        request = permissions.create(caller.originator(), params.get("tool", "Bash"), params.get("input", {}),
                                     params.get("rationale"), timeout_s=params.get("timeout_s"))
        return {"request_id": request.request_id, "originator": caller.client_id, "expires_at": request.expires_at}

    @registry.method(
        "permission.answer", summary="Answer a pending permission request (originator only).",
        params=object_schema({"request_id": REQUEST_ID, "result": ANSWER}, ("request_id", "result")),
        result=object_schema({"request_id": REQUEST_ID, "resolved_at": {"type": "number"}, "answer": ANSWER},
                             ("request_id", "resolved_at", "answer")),
        errors=ORIGINATOR_ERRORS)
    def answer(call: Call) -> dict:
        request = permissions.answer(call.params["request_id"], call.caller, call.params["result"])
        return {"request_id": request.request_id, "resolved_at": request.resolved_at, "answer": request.answer}

    @registry.method(
        "permission.refresh_timeout",
        summary="Push a pending request's deadline back by extend_s (capped 24 h after creation).",
        params=object_schema({"request_id": REQUEST_ID,
                              "extend_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LIFETIME_S,
                                           "default": 600}}, ("request_id",)),
        result=object_schema({"request_id": REQUEST_ID, "expires_at": {"type": "number"}},
                             ("request_id", "expires_at")),
        errors=ORIGINATOR_ERRORS)
    def refresh(call: Call) -> dict:
        request = permissions.refresh(call.params["request_id"], call.caller,
                                      call.params.get("extend_s", 600))
        return {"request_id": request.request_id, "expires_at": request.expires_at}

    @registry.method(
        "permission.list", summary="The caller's own pending permission requests.",
        result=object_schema({"pending": {"type": "array", "items": SUMMARY}}, ("pending",)))
    def list_pending(call: Call) -> dict:
        return {"pending": [r.summary() for r in permissions.list_pending(call.caller)]}

    @registry.method(
        "permission.get", summary="One of the caller's permission requests, pending or resolved.",
        params=object_schema({"request_id": REQUEST_ID}, ("request_id",)),
        result={"type": "object", "required": ["request_id", "state"]},
        errors=ORIGINATOR_ERRORS)
    def get(call: Call) -> dict:
        request: PermissionRequest = permissions.get(call.params["request_id"], call.caller)
        return request.detail()
