"""The width curve as a picture: us of server time per request against upstream calls.

    python benchmarks/width.py --json benchmarks/results/width.json
    python benchmarks/chart.py benchmarks/results/width.json [--out docs/width.png]

Reads the JSON that width.py saves (or run.py, which embeds it) and draws one
line per server, log-log, with each line's slope (us per extra call) in the
legend. matplotlib comes with the `bench` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import harness

DEFAULT_OUT = harness.ROOT / "docs" / "width.png"
STYLE = {  # name -> (colour, marker); the gateway drawn thickest
    "gateway": ("#d62728", "o"),
    "aiohttp": ("#1f77b4", "s"),
    "quart-httpx-aiohttp": ("#2ca02c", "^"),
    "quart-httpx": ("#9467bd", "v"),
    "flask-asyncio": ("#7f7f7f", "x"),
}


def draw(width: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt
    from width import LABELS

    rows, summary = width["rows"], width["summary"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name in dict.fromkeys(r["name"] for r in rows):
        points = sorted(
            (r["calls"], r["us_per_request"])
            for r in rows
            if r["name"] == name and "rps" in r and not r["errors"]
        )
        if not points:
            continue
        colour, marker = STYLE.get(name, ("black", "."))
        slope = summary.get(name, {}).get("slope_us_per_call")
        label = LABELS.get(name, name) + (f": {slope:,.0f} us/call" if slope else "")
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker=marker,
            color=colour,
            linewidth=2.5 if name == "gateway" else 1.5,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    widths = sorted({r["calls"] for r in rows})
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("upstream calls per request")
    ax.set_ylabel("server CPU time per request, us (one core)")
    ax.set_title("Fan-out width: cost per request (wrk -c32, one server core)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    when = width.get("environment", {}).get("time", "")
    fig.text(0.99, 0.01, f"benchmarks/width.py {when}", ha="right", fontsize=7, alpha=0.6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="JSON from width.py --json (or run.py --json)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    data = json.loads(Path(args.results).read_text())
    width = data.get("width")
    if width is None:
        print(f"{args.results} holds no width curve", file=sys.stderr)
        return 1
    draw(width, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
