"""The public API: exactly the names `gateway.__all__` promises, as httpx tests its own."""

from __future__ import annotations

import types

import gateway
from gateway import errors

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
