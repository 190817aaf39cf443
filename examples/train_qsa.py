"""Train one attention layer, an LSTM and an MLP on q-sparse averaging and compare test errors.

    python examples/train_qsa.py                 # N=16, q=1, 2000 examples, about 30 s on a laptop
    python examples/train_qsa.py --n-train 300 --steps 100

Runs train until the validation loss plateaus (the rate is halved after 2 passes without a 5%
improvement, the run stops after 5); --steps is only a budget, and the last column says which
of the two stopped each run.

Every hyper-parameter is in the RunConfig below; the same config as JSON runs with
`attnlab train CONFIG.json`, and grids of them with `attnlab sweep`.
"""

import argparse

from attnlab.experiments import ModelConfig, RunConfig, TaskConfig, TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--N", type=int, default=16, help="sequence length")
    parser.add_argument("--q", type=int, default=1, help="positions averaged per token")
    parser.add_argument("--n-train", type=int, default=2000, help="training examples")
    parser.add_argument(
        "--steps", type=int, default=3000, help="step budget (the plateau rule usually stops first)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = TaskConfig(name="qsa", params={"N": args.N, "q": args.q, "d_prime": 4})
    schedule = TrainConfig(
        n_train=args.n_train,
        max_steps=args.steps,
        eval_every=min(50, args.steps),
        schedule="plateau",
        patience=5,
        lr_patience=2,
        min_delta=0.05,
        lr=3e-3,
        threads=1,
    )
    print(f"qSA N={args.N} q={args.q}: the paper's threshold is 1/(2q) = {1 / (2 * args.q):.3f}")
    print(
        f"{'model':<12} {'worst-case error':>17} {'mean error':>11} {'params':>8} {'seconds':>8} {'steps':>6} "
        f"stopped by"
    )
    for arch, width in [("attention", 32), ("lstm", 32), ("mlp", 128)]:
        config = RunConfig(
            task=task, model=ModelConfig(arch=arch, width=width), train=schedule, seed=args.seed
        )
        result = train(config)
        m = result.metrics
        print(
            f"{arch:<12} {m['max_error']:>17.4f} {m['mean_error']:>11.4f} {m['n_params']:>8d} "
            f"{result.timings['wall_seconds']:>8.1f} {m['steps']:>6d} {m['stop_reason']}"
        )


if __name__ == "__main__":
    main()
