"""Where errors are decided: one table of codes, services that speak in domain refusals,
and a client whose exception classes match the daemon's codes.

These are structural checks of the layering the RFCs promise (the wire behaviour of each
refusal is tested over HTTP in test_sessions.py and test_permissions.py)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import cc_daemon
from cc_daemon import client, errors
from cc_daemon.methods import permission as permission_methods
from cc_daemon.methods import session as session_methods
from cc_daemon.refused import Refused

PACKAGE = Path(cc_daemon.__file__).parent
#: Services: they raise domain exceptions and must not know the RPC or HTTP layers.
SERVICES = ("session", "sessions", "permissions", "approvals", "auth", "identity", "events", "eventlog",
            "supervisor", "records")
WIRE_LAYERS = ("cc_daemon.rpc", "cc_daemon.methods", "cc_daemon.transport")


def imported_modules(source: str) -> set[str]:
    """The absolute names of every module a module of ``cc_daemon`` imports, lazy ones included."""
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), "cc_daemon") \
                if node.level else node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", SERVICES)
def test_services_import_nothing_of_the_rpc_or_http_layers(module):
    wire = {name for name in imported_modules((PACKAGE / f"{module}.py").read_text())
            if name.startswith(WIRE_LAYERS)}
    assert not wire, f"cc_daemon/{module}.py imports {sorted(wire)}"


def test_the_checker_sees_a_wire_import_however_it_is_written():
    for source in ("from .rpc import RpcError", "from . import rpc", "import cc_daemon.transport.policy",
                   "def f():\n    from .methods import session"):
        assert {name for name in imported_modules(source) if name.startswith(WIRE_LAYERS)}, source


def every_refusal() -> set[type[Refused]]:
    found = set()
    for info in pkgutil.walk_packages(cc_daemon.__path__, "cc_daemon."):
        if info.name.startswith(("cc_daemon.commands", "cc_daemon.__main__")):
            continue
        module = importlib.import_module(info.name)
        found.update(obj for _, obj in inspect.getmembers(module, inspect.isclass)
                     if issubclass(obj, Refused) and obj.__module__ == info.name)
    return found


def test_every_concrete_refusal_of_a_service_has_exactly_one_code():
    tables = {**session_methods.REFUSALS, **permission_methods.REFUSALS}
    assert len(tables) == len(session_methods.REFUSALS) + len(permission_methods.REFUSALS)
    concrete = {kind for kind in every_refusal() if not kind.__subclasses__()}
    assert concrete == set(tables), "a refusal without a code would reach the client as -32603"
    assert set(tables.values()) <= set(errors.CODES.values())


def test_the_client_has_one_exception_class_per_code_and_no_code_of_its_own():
    classes = {cls.code: cls for cls in vars(client).values()
               if isinstance(cls, type) and issubclass(cls, client.RpcCallError) and cls is not client.RpcCallError}
    assert set(classes) == set(errors.CODES.values())
    for code, cls in classes.items():
        error = client.rpc_error({"code": code, "message": "m", "data": {"x": 1}})
        assert type(error) is cls and error.code == code and error.data == {"x": 1}
    unknown = client.rpc_error({"code": -31999, "message": "new"})
    assert type(unknown) is client.RpcCallError and unknown.code == -31999


def test_no_module_but_errors_spells_an_error_code():
    """A literal -32xxx anywhere else would be a second definition that can drift."""
    offenders = []
    for path in list(PACKAGE.rglob("*.py")) + list((PACKAGE.parent / "commands").rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
                    and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, int)
                    and 32000 <= node.operand.value <= 32768):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders
