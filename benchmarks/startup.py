"""Start-up time: `attnlab --help` against `python -c "import numpy"`, as a ratio of medians.

    python benchmarks/startup.py            # 15 runs of each, interleaved
    python benchmarks/startup.py --quick    # 5 runs of each

Each run is a fresh interpreter (the same one running this script), so the figures include
Python's own start-up. Goal (issue 14): ratio <= 2. Also lists which heavy modules a bare
`attnlab --help` loads (it should load none). Writes benchmarks/results/startup.md
(quick: startup_quick.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HELP = [sys.executable, "-m", "attnlab", "--help"]
NUMPY = [sys.executable, "-c", "import numpy"]
HEAVY = (
    "torch",
    "scipy",
    "scipy.stats",
    "fastapi",
    "dask",
    "distributed",
    "matplotlib",
    "pandas",
    "numpy",
)
PROBE = (
    "import sys\nsys.argv = ['attnlab', '--help']\nfrom attnlab.cli import main\ntry:\n    main()\n"
    "except SystemExit:\n    pass\n"
    f"print('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
)


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 runs of each instead of 15")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 15)
    seconds(HELP), seconds(NUMPY)  # warm the file cache once
    help_times, numpy_times = [], []
    for _ in range(repeats):  # interleaved, so a load spike hits both
        help_times.append(seconds(HELP))
        numpy_times.append(seconds(NUMPY))
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True
    ).stdout
    loaded = [line[len("LOADED:") :] for line in out.splitlines() if line.startswith("LOADED:")]
    heavy = loaded[-1] if loaded and loaded[-1] else "none"
    h, n = statistics.median(help_times), statistics.median(numpy_times)
    lines = [
        "# Start-up time",
        "",
        f"Command: `python benchmarks/startup.py{' --quick' if args.quick else ''}` "
        f"({repeats} interleaved runs each, median; Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end).",
        "",
        "| command | median s | min s | max s |",
        "|---|---|---|---|",
        f"| `attnlab --help` | {h:.3f} | {min(help_times):.3f} | {max(help_times):.3f} |",
        f'| `python -c "import numpy"` | {n:.3f} | {min(numpy_times):.3f} | {max(numpy_times):.3f} |',
        "",
        f"Ratio (median help / median numpy): **{h / n:.2f}** (goal <= 2).",
        "",
        f"Heavy modules loaded by `attnlab --help`: {heavy}.",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("startup_quick.md" if args.quick else "startup.md")).write_text(
        "\n".join(lines) + "\n"
    )
    print("\n".join(lines))
    print(f"ratio {h / n:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
