"""`gateway.asgi:app`: the app for the config named by GATEWAY_CONFIG (default ./gateway.toml).

`hypercorn --config hypercorn.toml gateway.asgi:app` serves it (so does `gateway serve`).
A `combine` hook is looked up in the config file's folder first (hooks.py), then here:
the working directory is importable, so `combine = "mypkg.hooks:fn"` finds project code.
Importing it also sets up this process's logging (logs.py): every line, Hypercorn's and
the access log included, in `gateway.log_format`, client values escaped.
"""

import os
import sys

from . import logs
from .app import create_app
from .config import load_config

if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())

_config = load_config(os.environ.get("GATEWAY_CONFIG", "gateway.toml"))
logs.install(_config.gateway.log_format)
app = create_app(_config)
