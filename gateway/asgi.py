"""`gateway.asgi:app`: the app for the config named by GATEWAY_CONFIG (default ./gateway.toml).

`hypercorn --config hypercorn.toml gateway.asgi:app` serves it. A `combine`
hook is looked up in the config file's folder first (hooks.py), then here: the
working directory is importable, so `combine = "mypkg.hooks:fn"` finds project code.
"""

import os
import sys

from .app import create_app

if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())

app = create_app(os.environ.get("GATEWAY_CONFIG", "gateway.toml"))
