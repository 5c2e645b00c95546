"""Importing `combine = "module:function"` hooks: from the config file's folder, then sys.path.

A config file and its hooks usually live together (`deploy/gateway.toml` beside
`deploy/hooks.py`), so a hook's top-level module is looked up in the config file's
folder first; only if it is not there does the normal import path (which has the
working directory on it, as with `python -m`) decide. When the folder holds it, the
folder is put at the front of `sys.path`, as Python does for a script's folder, so that
the hook's own imports of its neighbours work too.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Combine = Callable[[dict[str, Any], Any], Any | Awaitable[Any]]


def hook_folder(source: str | None) -> str | None:
    """The folder hooks are looked up in first: the config file's, None for a dict config."""
    return None if source is None else str(Path(source).resolve().parent)


def import_hook(spec: str, folder: str | None = None) -> Combine:
    """Import `module:function`; errors name what was missing."""
    module_name, _, attr = spec.partition(":")
    if folder is not None:
        _prefer_folder(module_name, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module '{module_name}': {exc}") from exc
    except Exception as exc:  # the module itself is broken (SyntaxError...): a config problem
        raise ImportError(
            f"cannot import module '{module_name}': {type(exc).__name__}: {exc}"
        ) from exc
    try:
        hook = getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"module '{module_name}' has no '{attr}'") from None
    if not callable(hook):
        raise TypeError(f"'{spec}' is not callable")
    return hook  # type: ignore[no-any-return]


def hook_problem(spec: str, folder: str | None = None) -> str | None:
    """Why `spec` cannot be imported, or None: config validation reports it with the rest."""
    try:
        import_hook(spec, folder)
    except (ImportError, AttributeError, TypeError) as exc:
        return str(exc)
    return None


def _prefer_folder(module_name: str, folder: str) -> None:
    top = module_name.partition(".")[0]
    if top in sys.modules or folder in sys.path or not os.path.isdir(folder):
        return
    if importlib.machinery.PathFinder.find_spec(top, [folder]) is not None:
        sys.path.insert(0, folder)
