"""The layering rules, checked on the source: servicers adapt, the domain decides."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[2] / "server"
SERVICERS = sorted((SERVER / "services").glob("*_service.py"))
# Every module of the layer: the servicers and what they share (converters, the registry).
SERVICE_MODULES = sorted((SERVER / "services").glob("*.py"))
DOMAIN = sorted((SERVER / "domain").glob("*.py")) + sorted((SERVER / "models").glob("*.py"))

# What a servicer must not touch: transactions, idempotency claims and field checks belong to
# the domain function it calls.
FORBIDDEN_IN_SERVICERS = {
    "server.db",
    "server.domain.idempotency",
    "server.validation",
    "peewee",
}


def _imported_modules(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _domain_modules(tree: ast.Module) -> set[str]:
    """Local names bound to server.domain modules (from server.domain import orders, ...)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "server.domain":
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _domain_calls(method: ast.FunctionDef, modules: set[str]) -> list[str]:
    """Calls of domain functions in `method` (commands, i.e. CamelCase classes, not counted)."""
    calls = []
    for node in ast.walk(method):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in modules
            and not node.func.attr[:1].isupper()
        ):
            calls.append(f"{node.func.value.id}.{node.func.attr}")
    return calls


@pytest.mark.parametrize("path", SERVICE_MODULES, ids=lambda p: p.name)
def test_servicers_import_no_transaction_idempotency_or_validation(path: Path) -> None:
    imported = _imported_modules(ast.parse(path.read_text()))
    assert not {
        name
        for name in imported
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_SERVICERS)
    }
    assert "server.errors.Validator" not in imported


@pytest.mark.parametrize("path", SERVICERS, ids=lambda p: p.name)
def test_every_servicer_method_makes_at_most_one_domain_call(path: Path) -> None:
    tree = ast.parse(path.read_text())
    modules = _domain_modules(tree)
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for method in node.body:
            if isinstance(method, ast.FunctionDef) and method.name[:1].isupper():
                calls = _domain_calls(method, modules)
                assert len(calls) <= 1, f"{path.name} {method.name} calls {calls}"


@pytest.mark.parametrize("path", DOMAIN, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_domain_and_models_know_nothing_of_grpc_or_messages(path: Path) -> None:
    imported = _imported_modules(ast.parse(path.read_text()))
    assert not {
        name
        for name in imported
        if name == "grpc"
        or name.startswith("grpc.")
        or name.startswith("storefront.")
        or name.endswith("_pb2")
        or name.startswith("server.services")
    }
