"""The committed training grid as a report: exports of the store (JSON lines for the reproduce
claim, Parquet runs and curves), figures, and a Markdown page with every measured table (the
tables themselves are built in grid_tables.py; their names are re-exported here).

    python benchmarks/training.py --grid STORE --runs-dir RUNS
"""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from pathlib import Path

from attnlab.experiments.analysis import model_label, summarise
from attnlab.experiments.config import RunConfig, load_sweep
from attnlab.experiments.store import (
    ResultStore,
    export_curves_parquet,
    export_parquet,
    export_records,
)
from attnlab.experiments.thresholds import width_needs
from attnlab.report.grid_tables import (
    GRID_SWEEPS,
    bracketing_table,
    cells_table,
    floor_table,
    load_summary,
    match3_summary,
    match3_table,
    samples_table,
    success_matrix,
    throughput_table,
    width_table,
)
from attnlab.report.text import share


def _sweep_members(finished: set[str] | None = None) -> dict[str, set[str]]:
    """Run ids of each committed sweep as its config stands now (a store can also hold runs of
    earlier versions of a config; they are left out of the report and the exports). With
    `finished`, only the runs of cells whose every seed finished: a cell cut mid-way (an
    interrupted sweep) stays out of the tables and exports until its last seed is in."""
    members = {}
    for name in GRID_SWEEPS:
        configs = load_sweep(name).expand()
        if finished is None:
            members[name] = {c.run_id for c in configs}
            continue
        cells: dict[str, list[str]] = defaultdict(list)
        for c in configs:
            cells[c.model_copy(update={"seed": 0}).run_id].append(c.run_id)
        members[name] = {
            run_id for ids in cells.values() if all(i in finished for i in ids) for run_id in ids
        }
    return members


def _pattern_figure(records, runs_dir: Path | None, out: Path) -> str | None:
    """Where a trained head looks on one qSA input: the best-trained N=16, q=2 attention run."""
    if runs_dir is None:
        return None
    from attnlab.experiments.inspect import qsa_attention_pattern
    from attnlab.experiments.plots import plot_attention_pattern

    candidates = [
        r
        for r in records
        if r["config"]["task"]["name"] == "qsa"
        and r["config"]["model"]["arch"] == "attention"
        and r["config"]["task"]["params"] == {"N": 16, "q": 2, "d_prime": 4}
        and (runs_dir / r["run_id"] / "model.safetensors").exists()
    ]
    if not candidates:
        return None
    best = min(
        candidates,
        key=lambda r: (
            -r["config"]["train"]["n_train"],
            r["config"]["model"]["width"] != 32,
            r["seed"],
        ),
    )
    config = RunConfig.model_validate(best["config"])
    pattern = qsa_attention_pattern(config, runs_dir / best["run_id"])
    # float32 softmax rounding can put a full row's mass a hair above 1
    mass = share(min(pattern["mass_on_targets"][0], 1.0), 1.0)
    plot_attention_pattern(
        pattern["weights"][0],
        pattern["pointers"],
        out,
        title=f"trained head ({model_label(best['config']['model'])}, n={config.train.n_train}, "
        f"seed {config.seed}), one qSA input, N=16, q=2\n"
        f"{mass} of each row's weight on y_i (red circles)",
    )
    return f"Run {best['run_id']}: on average {mass} of row i's attention weight sits on the q = 2 positions of y_i (uniform attention would put 12.5% there)."


def write_grid_report(
    store_path: Path,
    runs_dir: Path | None,
    out: Path,
    command: str,
    load_log: Path | None = None,
    nice: int = 10,
) -> str:
    from attnlab.experiments.plots import (
        plot_curves,
        plot_error_vs_samples,
        plot_samples_vs_n,
        plot_width_needs,
    )
    from attnlab.report.training import QSA_SWEEPS, judge, verdict

    out.mkdir(parents=True, exist_ok=True)
    with ResultStore(store_path) as store:
        members = _sweep_members(store.finished_ids())
        current = set().union(*members.values())
        records = [r for r in store.records() if r["run_id"] in current]
        counts = store.counts()
        stale = len(store.records()) - len(records)
        exported = export_records(store, out / "training-grid.jsonl.gz", only=current)
        export_parquet(store, out / "training-grid-runs.parquet", only=current)
        curve_rows = export_curves_parquet(
            store, out / "training-grid-curves.parquet", only=current
        )
        cells = cells_table(store, records)
        curves_for = {}
        for r in records:
            p = r["config"]["task"]["params"]
            if (
                r["config"]["model"]["arch"] in ("attention", "lstm")
                and r["seed"] == 0
                and p.get("N") == 16
                and p.get("q") == 1
                and r["config"]["train"]["n_train"] in (1024, 16384)
            ):
                curves_for[
                    f"{model_label(r['config']['model'])}, n={r['config']['train']['n_train']}"
                ] = store.curve(r["run_id"])
    in_sweeps = lambda names: [r for r in records if any(r["run_id"] in members[n] for n in names)]  # noqa: E731
    qsa = in_sweeps(QSA_SWEEPS)
    judged = judge(
        [{**r, "sweeps": [n for n in QSA_SWEEPS if r["run_id"] in members[n]]} for r in qsa]
    )
    status, parts = verdict(judged)
    widths = [w for w in width_needs(in_sweeps(("qsa-width-grid",))) if len(w["widths_tried"]) > 1]
    throughput, rates = throughput_table(records)
    budget = sum(r["metrics"].get("stop_reason") == "budget" for r in records)

    figures = []
    if judged["needs"]:
        plot_samples_vs_n(judged["needs"], out / "training-samples-vs-n.png")
        plot_error_vs_samples(summarise(judged["records"]), out / "training-error-vs-samples.png")
        figures += [
            "![samples needed vs N](training-samples-vs-n.png)",
            "",
            "![error vs training examples](training-error-vs-samples.png)",
            "",
        ]
    if widths:
        plot_width_needs(widths, out / "training-width-grid.png")
        figures += ["![width needed vs q and N](training-width-grid.png)", ""]
    if curves_for:
        plot_curves(dict(sorted(curves_for.items())), out / "training-curves.png")
        figures += ["![training curves](training-curves.png)", ""]
    pattern = _pattern_figure(records, runs_dir, out / "training-attention-pattern.png")
    if pattern:
        figures += [
            "![attention pattern of a trained head](training-attention-pattern.png)",
            "",
            pattern,
            "",
        ]

    lines = (
        [
            "# Training grid (committed results)",
            "",
            f"Command: `{command}`  ",
            f"Machine: {platform.machine()}, 2 CPU cores shared with other jobs ({load_summary(load_log, records)}); "
            f"one sweep worker at `nice -n {nice}`, one torch thread, float32, device recorded per run: "
            f"{sorted({r.get('device') for r in records})}. GPU: not measured (no GPU was lent to this session).",
            "",
            f"Store: {sum(counts.values())} runs ({', '.join(f'{k} {v}' for k, v in counts.items())}), of which "
            f"{len(records)} belong to the committed configs as they stand ({stale} finished runs of earlier "
            f"versions of them, or of cells whose seeds have not all finished, are left out); {budget} of these stopped by the step budget, the rest by the "
            f"plateau rule. Exports: "
            f"`training-grid.jsonl.gz` ({exported} runs; what `attnlab reproduce` reads), "
            f"`training-grid-runs.parquet`, `training-grid-curves.parquet` ({curve_rows} curve points).",
            "",
            "## Which cells ran",
            "",
        ]
        + cells
        + [
            "",
            "## Samples needed (qSA)",
            "",
            "Per seed: the first training-set size whose test error is within 1/(2q), refined by log-log "
            "interpolation with the size before it; `<=` a seed already within at the smallest size, `>` a seed "
            "never within. Interval: 95% t-interval of the mean of log2(need) over seeds (geometric mean), "
            "given when no seed is censored. Worst case = max over positions and 1024 test sequences (the paper's "
            "notion); mean = mean over them.",
            "",
        ]
        + samples_table(judged["needs"])
        + [
            "",
            "The same needs as one matrix (q = 1; worst-case error; geometric mean over seeds, `>` where "
            "no seed got there with the largest size tried; MLPs: first-layer width against N d'/2):",
            "",
        ]
        + success_matrix(judged["needs"])
        + [
            "",
            f"Claim check (`attnlab reproduce`): **{ {True: 'reproduced', False: 'not reproduced', 'partly': 'partly reproduced'}[status] }**.",
            "",
        ]
    )
    lines += [f"- {p}" for p in parts]
    if judged["superseded"]:
        lines += [
            "",
            "### Step floors: the same cells trained with a longer floor",
            "",
            f"{len(judged['superseded'])} runs of the (setting, model) pairs below were trained again with a "
            "longer step floor (no plateau stop or learning-rate cut before it); the samples-needed table, the "
            "comparisons and the growth fits use the longer floor, and the shorter one is shown here beside it "
            "(both are in the exports).",
            "",
        ] + floor_table(judged["superseded"], judged["records"])
    lines += [
        "",
        "## FFN and RNN baselines against their bounds (issue 11)",
        "",
        "The FFN bound asks for a first-layer width of about N d'/2; the RNN bound for about (N-1)/2 bits of "
        "state in a one-pass RNN (an LSTM of hidden size m carries 2m floats, h and c; a GRU m per direction). "
        "One float32 state number holds 32 bits, so below N = 66 every RNN is above the RNN bound; at N = 80 "
        "(39.5 bits) a one-pass GRU of hidden size 1 (32 bits) is below it and one of size 2 (64 bits) above. "
        "What training shows is whether sizes on either side learn from this many samples, not the bound itself "
        "(which is about every network of a size). Errors: mean over seeds with a 95% t-interval; 'predict 0' is "
        "the error of a model that learned nothing (0 is the mean target). 'Stopped at the floor' counts "
        "runs the plateau rule stopped at the first step it could (the step floor): a run stopped there at "
        "the 'predict 0' error has not left the initial plateau, so its row says little about the bound.",
        "",
    ] + bracketing_table(qsa)
    lines += ["", "## Smallest width (qSA, one head)", ""] + width_table(widths)
    lines += (
        [
            "",
            "## Match3: standard attention across N and H, beside third-order attention",
            "",
        ]
        + match3_summary(records)
        + ["", "Per cell:", ""]
        + match3_table(records)
    )
    lines += [
        "",
        "## Runs per hour on CPU",
        "",
        "One worker, one torch thread; CPU seconds are the run's own (process) time, so runs per "
        "CPU-core hour is what an idle core would do; a run holds one core for its wall time, so runs per "
        "core-hour of run wall time is what this shared core did.",
        "",
    ] + throughput
    if rates.get("runs"):
        lines += [
            "",
            f"Whole grid: {rates['runs']} runs; {rates['cpu_hours']:.2f} CPU-core hours of run CPU time "
            f"({rates['runs_per_cpu_hour']:.0f} runs per CPU-core hour) and {rates['run_wall_core_hours']:.2f} "
            f"core-hours of run wall time ({rates['runs_per_core_hour_of_run_wall']:.0f} runs per core-hour). "
            f"Training ran during {rates['busy_wall_hours']:.2f} h of the {rates['span_hours']:.2f} h from the "
            f"first start to the last finish ({rates['runs_per_busy_wall_hour']:.0f} runs per busy wall hour, "
            f"with up to 2 workers at once in one sweep); the other {rates['idle_hours']:.2f} h were gaps between "
            f"sweeps with nothing training, so no rate is taken over the whole span.",
        ]
    lines += ["", "## Figures", ""] + figures
    (out / "training-grid.json").write_text(
        json.dumps(
            {"throughput": rates, "fits": judged["fits"], "status": str(status)},
            indent=1,
            default=str,
        )
    )
    text = "\n".join(lines) + "\n"
    (out / "training-grid.md").write_text(text)
    return text
