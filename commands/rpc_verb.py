"""``cheetahclaws rpc METHOD [JSON | key=value ...]``: call any method, like curl but already
knowing where the daemon is and how to authenticate.

Owns: turning command-line words into JSON-RPC params and printing the reply (pretty, or the
exact envelope with ``--raw``). Must not: know any method; ``rpc.discover`` lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .common import EXIT_REFUSED, add_client, client_verb, print_rpc_error

EXAMPLES = """examples:
  cheetahclaws rpc system.ping
  cheetahclaws rpc echo.ping '{"hello": "world"}'
  cheetahclaws rpc permission.demo tool=Bash input='{"command": "ls"}' timeout_s=60
  cheetahclaws rpc permission.answer request_id=pr_0123456789abcdef result='{"approve": true}'
  cheetahclaws rpc rpc.discover --raw

params: one JSON object (by name) or array (by position), or key=value words. A value is
read as JSON when it is valid JSON (42, true, null, {"a": 1}, "007"), else as a string.
exit codes: 0 result; 1 the daemon answered an error (code, message and data on stderr);
2 bad usage; 3 no daemon answers."""


class ParamsError(ValueError):
    """Command-line params that cannot be turned into JSON-RPC params."""


def parse_params(words: list[str]) -> dict[str, Any] | list[Any] | None:
    """``[]`` -> None; ``['{"a": 1}']`` -> ``{"a": 1}``; ``['[1]']`` -> ``[1]``;
    ``['a=1', 'b=x']`` -> ``{"a": 1, "b": "x"}`` (values are JSON when they parse)."""
    if not words:
        return None
    if len(words) == 1 and words[0].lstrip()[:1] in ("{", "["):
        try:
            params = json.loads(words[0])
        except ValueError as exc:
            raise ParamsError(f"params are not valid JSON: {exc}") from None
        if not isinstance(params, (dict, list)):
            raise ParamsError("params must be a JSON object or array")
        return params
    params_by_name: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ParamsError(f"expected key=value or one JSON object, got {word!r}")
        if key in params_by_name:
            raise ParamsError(f"param {key!r} given twice")
        params_by_name[key] = json_or_string(value)
    return params_by_name


def json_or_string(value: str) -> Any:
    try:
        return json.loads(value, parse_constant=_refuse_constant)
    except ValueError:
        return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)  # NaN / Infinity are not JSON; keep them as strings


def add_parser(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("rpc", help="call any JSON-RPC method and print the result",
                              description="Call METHOD on the running daemon and print its result.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", metavar="METHOD", help="e.g. system.status (rpc.discover lists them all)")
    parser.add_argument("params", nargs="*", metavar="PARAM", help="one JSON object or array, or key=value words")
    parser.add_argument("--raw", action="store_true", help="print the exact JSON-RPC response envelope")
    parser.add_argument("--notify", action="store_true",
                        help="send a notification: the daemon answers nothing, not even errors")
    add_client(parser)
    parser.set_defaults(run=run)


@client_verb
def run(args: argparse.Namespace) -> int:
    from .common import connect, fail

    try:
        params = parse_params(args.params)
    except ParamsError as exc:
        fail(str(exc), 2)
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": args.method}
    if params is not None:
        message["params"] = params
    if not args.notify:
        message["id"] = 1
    with connect(args) as client:
        response = client.request("POST", "/rpc", body=json.dumps(message).encode(),
                                  headers={"Content-Type": "application/json"})
    if not response.content:  # a notification: nothing comes back
        return 0
    try:
        reply = response.json()
    except ValueError:
        fail(f"the daemon answered something that is not JSON: {response.text[:200]!r}", EXIT_REFUSED)
    if args.raw:
        print(response.text)
    if isinstance(reply, dict) and "error" in reply:
        if not args.raw:
            error = reply["error"]
            print_rpc_error(error.get("code"), error.get("message"), error.get("data"))
        return EXIT_REFUSED
    if not args.raw:
        print_result(reply.get("result"))
    return 0


def print_result(result: Any) -> None:
    """A string as itself; anything else as indented JSON."""
    if isinstance(result, str):
        print(result)
    else:
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
