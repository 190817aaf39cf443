"""Run every benchmark script in this folder, one after another, and list where the results went.

python benchmarks/run.py            # full sizes (tens of minutes on 2 CPU cores)
python benchmarks/run.py --quick    # small sizes, a few minutes
python benchmarks/run.py single_head noisy   # only these
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="benchmark names (file stems); default: all")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = parser.parse_args()
    scripts = sorted(
        p for p in HERE.glob("*.py") if p.name != "run.py" and not p.name.startswith("_")
    )
    if args.names:
        known = {p.stem for p in scripts}
        unknown = sorted(set(args.names) - known)
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; known: {sorted(known)}")
        scripts = [p for p in scripts if p.stem in set(args.names)]
    failed = []
    for script in scripts:
        start = time.perf_counter()
        print(f"\n=== {script.stem} ===", flush=True)
        rc = subprocess.call([sys.executable, str(script)] + (["--quick"] if args.quick else []))
        print(f"=== {script.stem}: exit {rc}, {time.perf_counter() - start:.0f} s ===", flush=True)
        if rc != 0:
            failed.append(script.stem)
    print(f"\nresults: {HERE / 'results'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
