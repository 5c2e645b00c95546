"""The public API: exactly the names `gateway.__all__` promises, as httpx tests its own."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import gateway
from gateway import errors, jobs, listen

EXPECTED = {
    # the app and its configuration
    "create_app",
    "Gateway",
    "Result",
    "Config",
    "load_config",
    # business logic
    "RequestContext",
    "Fan",
    "FanCall",
    # the error hierarchy
    "GatewayError",
    "ConfigError",
    "RequestError",
    "CallError",
    "CallInputError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UpstreamStatus",
    "UpstreamBadReply",
    "CircuitOpen",
    "MemoryBudgetExhausted",
    "BindError",
    "JobsError",
    "JobsBusy",
    "JobsClosed",
    "JobsUnavailable",
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(gateway.__all__) == EXPECTED


def test_all_is_sorted_without_duplicates() -> None:
    assert gateway.__all__ == sorted(set(gateway.__all__), key=lambda n: (n[0].islower(), n))


def test_every_public_name_in_the_package_is_exported() -> None:
    public = {
        name for name, value in vars(gateway).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(gateway.__all__)


def test_exported_names_resolve() -> None:
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None, name


def test_every_exported_error_is_a_gateway_error_with_a_docstring() -> None:
    for name in gateway.__all__:
        value = getattr(gateway, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, gateway.GatewayError), name
            assert value.__doc__, name
            assert getattr(errors, name) is value


def test_call_errors_share_one_base() -> None:
    for call_error in (gateway.CallInputError, gateway.UpstreamTimeout,
                       gateway.UpstreamUnavailable, gateway.UpstreamStatus,
                       gateway.UpstreamBadReply, gateway.CircuitOpen):
        assert issubclass(call_error, gateway.CallError)
    for kind in (gateway.ConfigError, gateway.RequestError, gateway.CallError):
        assert kind.__mro__[1] is gateway.GatewayError


def _errors_in(module: types.ModuleType) -> set[type[BaseException]]:
    return {value for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, BaseException)
            and value.__module__ == module.__name__}


def _drawn_tree() -> dict[str, str | None]:
    """errors.py's docstring tree as {class name: the name it is drawn under}."""
    tree = (errors.__doc__ or "").split("\n\n")[1].splitlines()
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name) down to the current line
    for line in tree:
        name = line.split("── ")[-1].split()[0]
        column = line.index(name)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return parents


def test_every_error_of_the_hierarchy_is_exported_and_drawn_under_its_base() -> None:
    defined = {cls.__name__: cls for cls in _errors_in(errors)}
    assert set(defined) <= set(gateway.__all__)
    drawn = _drawn_tree()
    assert set(drawn) == set(defined)
    for name, parent in drawn.items():
        base = defined[name].__mro__[1]
        assert parent == (None if base is Exception else base.__name__), name


def test_the_job_and_listen_modules_reuse_the_exported_errors() -> None:
    assert jobs.JobsError is gateway.JobsError
    assert jobs.JobsBusy is gateway.JobsBusy
    assert listen.BindError is gateway.BindError
    for kind in (gateway.JobsBusy, gateway.JobsClosed, gateway.JobsUnavailable):
        assert kind.__mro__[1] is gateway.JobsError
    assert gateway.JobsError.__mro__[1] is gateway.GatewayError
    assert gateway.MemoryBudgetExhausted.__mro__[1] is gateway.CallError


def test_exceptions_outside_the_hierarchy_are_private() -> None:
    """An exception class defined anywhere else in the package is `_private`: it is caught
    and turned into one of the exported errors (or a refusal) before a caller sees it."""
    package = Path(gateway.__file__).parent
    public = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.ClassDef) and not node.name.startswith("_")
                    and any(_looks_like_exception(base) for base in node.bases)):
                public.append(f"{relative}:{node.lineno} {node.name}")
    assert public == [], ("a public error belongs in gateway/errors.py (drawn in its tree, "
                          "exported from gateway); an internal one is named _Private")


def _looks_like_exception(base: ast.expr) -> bool:
    name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
    known = {cls.__name__ for cls in _errors_in(errors)}
    return name in known or name.endswith(("Error", "Exception", "Exhausted")) or (
        name in {"Exception", "BaseException"})
