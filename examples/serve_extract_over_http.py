"""Steal an attention head from an HTTP API, the way an attacker meets a deployed model.

A random head is saved to a safetensors file and served on 127.0.0.1 (as `attnlab serve` does),
behind an API key with a query budget. The attacker only has the URL and the key: it builds
`Oracle.http(url, key)` and runs the single-head extractor unchanged, then finds the budget spent.

    python examples/serve_extract_over_http.py --d 6
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from attnlab import BudgetExhausted, Oracle
from attnlab.evaluate import relative_error
from attnlab.extract.single_head import single_head
from attnlab.models import SingleHeadAttention
from attnlab.serve import KeyStore, load_target, save_target
from attnlab.serve.app import ServeConfig, create_app
from attnlab.serve.runner import BackgroundServer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d", type=int, default=6, help="token width of the served head")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head's weights")
    parser.add_argument(
        "--fidelity", type=int, default=100, help="fresh queries to check the stolen head on"
    )
    args = parser.parse_args()
    d = args.d
    budget = d * d + d + args.fidelity  # exactly what the extraction and its check need

    with tempfile.TemporaryDirectory() as tmp:
        # --- the operator: `attnlab make-target`, `attnlab keys add`, `attnlab serve` -----------
        head = SingleHeadAttention.random(d, seed=args.seed)
        model = save_target(head, Path(tmp) / "head.safetensors")
        store = KeyStore(Path(tmp) / "keys.sqlite")
        key = store.add_key("attacker", budget)
        app = create_app(load_target(model), store, ServeConfig(max_batch=64))
        with BackgroundServer(app) as url:
            # --- the attacker: a URL and a key, nothing else ---------------------------------
            oracle = Oracle.http(url, key)
            stolen = single_head(oracle, fidelity_samples=args.fidelity)
            print(
                f"served at {url}: a {oracle.http_target.info()['kind']} target with d = {oracle.d}"
            )
            print(
                f"extraction: {stolen.queries} queries (d^2 + d = {d * d + d}), "
                f"{oracle.http_target.requests} HTTP requests"
            )
            print(
                f"relative error of W: {relative_error(stolen.W, head.W.detach().numpy()):.1e}, "
                f"of v: {relative_error(stolen.v, head.v.detach().numpy()):.1e}"
            )
            print(
                f"largest |stolen - served| on {stolen.fidelity_queries} fresh queries: {stolen.fidelity:.1e}"
            )
            print(f"budget left on the server: {oracle.http_target.budget_left} of {budget}")
            try:
                oracle(np.zeros((1, 1, d)))
            except BudgetExhausted as exc:
                print(f"one more query: {type(exc).__name__}: {exc}")
        store.close()


if __name__ == "__main__":
    main()
