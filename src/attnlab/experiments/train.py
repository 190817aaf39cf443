"""The one training loop: AdamW on a fixed training set, early stopping on a validation split,
test metrics from the task's own scorer, and checkpoints that let an interrupted run resume.

A run directory holds `config.json`, checkpoints `ckpt-<step>.safetensors` (weights, best
weights, optimiser moments, current epoch order) each paired with `ckpt-<step>.json` (step,
early-stopping state, RNG state, elapsed time; written last, so a checkpoint counts only once its
JSON exists), and at the end `model.safetensors` (best weights) and `result.json`.

Every validation pass appends one point to the run's training curve (step, mean training loss
since the previous pass, validation loss, learning rate), returned with the result and passed to
an optional `logger` (see attnlab.experiments.logging). A non-finite loss stops the run with
TrainingDiverged, so a diverged run is never recorded as finished.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm  # notebook widgets where available

from attnlab.errors import AttnlabError
from attnlab.experiments.config import RunConfig
from attnlab.experiments.models import build_model, count_parameters
from attnlab.experiments.results import CURVE_FIELDS, RunResult
from attnlab.experiments.rundir import Checkpoints, atomic_write, prepare_run_dir
from attnlab.experiments.schedule import LoopState, learning_rate, update_stopping

__all__ = ["RunResult", "TrainingDiverged", "learning_rate", "sample_splits", "train", "versions"]

# Above this many bytes of encoded tokens a split is encoded minibatch by minibatch instead of once.
_ENCODE_ONCE_LIMIT = 256 * 2**20
_EVAL_CHUNK = 1024
# Module constructors draw from torch's global RNG; runs sharing a process (Dask thread workers)
# seed and build under this lock so every run's initial weights depend on its seed alone.
_INIT_LOCK = threading.Lock()


def versions() -> dict[str, str]:
    from attnlab._version import __version__

    return {"attnlab": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TrainingDiverged(AttnlabError, ArithmeticError):
    """The training or validation loss became non-finite (inf or nan)."""

    def __init__(self, message: str, step: int = -1):  # default: exceptions unpickle from args
        super().__init__(message)
        self.step = step


# Called after every validation pass with (step, {"train_loss", "val_loss", "lr"}).
Logger = Callable[[int, dict[str, float]], None]


class _Split:
    """A sampled split with its token encoding, sliced by example index."""

    def __init__(self, task, batch, dtype: torch.dtype, device: torch.device):
        self.task, self.batch, self.dtype, self.device = task, batch, dtype, device
        self.size = len(batch.targets)
        self.binary = not np.issubdtype(batch.targets.dtype, np.floating)
        bytes_needed = self.size * int(np.prod(batch.targets.shape[1:2])) * task.token_dim * 8
        self._tokens = self._encode(batch) if bytes_needed <= _ENCODE_ONCE_LIMIT else None
        self._targets = torch.as_tensor(batch.targets, device=device).to(dtype)

    def _encode(self, batch) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.task.tokens(batch)), device=self.device).to(
            self.dtype
        )

    def tokens(self, index: torch.Tensor | slice) -> torch.Tensor:
        if self._tokens is not None:
            return self._tokens[index]
        positions = np.arange(self.size)[index.cpu().numpy() if torch.is_tensor(index) else index]
        return self._encode(self.batch.select(positions))

    def targets(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self._targets[index]


def _loss_fn(binary: bool):
    return nn.BCEWithLogitsLoss() if binary else nn.MSELoss()


def _outputs(model: nn.Module, tokens: torch.Tensor, binary: bool) -> torch.Tensor:
    out = model(tokens)
    return out.squeeze(-1) if binary else out


@torch.no_grad()
def _evaluate(model: nn.Module, split: _Split) -> tuple[float, torch.Tensor]:
    """Mean loss over the split and the raw outputs (in example order)."""
    model.eval()
    loss_fn = _loss_fn(split.binary)
    outputs, total = [], 0.0
    for start in range(0, split.size, _EVAL_CHUNK):
        chunk = slice(start, min(start + _EVAL_CHUNK, split.size))
        out = _outputs(model, split.tokens(chunk), split.binary)
        total += loss_fn(out, split.targets(chunk)).item() * (chunk.stop - chunk.start)
        outputs.append(out)
    model.train()
    return total / split.size, torch.cat(outputs)


def _predictions(outputs: torch.Tensor, binary: bool) -> np.ndarray:
    if binary:
        return (outputs > 0).to(torch.int8).cpu().numpy()
    return outputs.detach().cpu().to(torch.float64).numpy()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return torch.device(name)


def _output_dim(targets: np.ndarray) -> int:
    return 1 if targets.ndim == 2 else int(targets.shape[-1])


def sample_splits(config: RunConfig):
    """The task and its train / validation / test batches, each from its own child seed, so the
    test set of a seed is the same whatever the training-set size."""
    from attnlab.tasks import get_task

    task = get_task(config.task.name, **config.task.params)
    train_rng, val_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(3)
    )
    t = config.train
    return (
        task,
        task.sample(train_rng, t.n_train),
        task.sample(val_rng, t.n_val),
        task.sample(test_rng, t.n_test),
    )


def _curve(history: list[list[float]]) -> dict[str, list[float]]:
    return {name: [point[i] for point in history] for i, name in enumerate(CURVE_FIELDS)}


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    *,
    progress: bool = False,
    step_budget: int | None = None,
    logger: Logger | None = None,
) -> RunResult:
    """Train config.model on config.task; return test metrics, timings and the training curve.

    With `run_dir`, checkpoints every `train.checkpoint_every` steps (and on Ctrl-C) and resumes
    from the latest one; a finished run's result is read back instead of retrained. `step_budget`
    stops after that many steps in this call, checkpoints, and returns status "partial".
    `logger(step, values)` is called after every validation pass. Raises TrainingDiverged when a
    loss becomes non-finite.
    """
    started_at, wall_start, cpu_start = _now(), time.perf_counter(), time.process_time()
    t = config.train
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        prepare_run_dir(run_path, config)
        if (run_path / "result.json").exists():
            return RunResult.from_dict(json.loads((run_path / "result.json").read_text()))
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    device, dtype = _device(t.device), getattr(torch, t.dtype)

    task, train_batch, val_batch, test_batch = sample_splits(config)
    train_split, val_split, test_split = (
        _Split(task, b, dtype, device) for b in (train_batch, val_batch, test_batch)
    )
    binary = train_split.binary
    seq_len = train_batch.targets.shape[1]

    with _INIT_LOCK:
        torch.manual_seed(config.seed)
        model = build_model(config.model, seq_len, task.token_dim, _output_dim(train_batch.targets))
    model = model.to(device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = _loss_fn(binary)

    checkpoints = Checkpoints(run_path) if run_path is not None else None
    latest = checkpoints.latest_step() if checkpoints else None
    if latest is not None:
        best_weights, order, state = checkpoints.load(latest, model, optimizer, generator, device)
    else:
        best_weights = copy.deepcopy(model.state_dict())
        order, state = torch.randperm(train_split.size, generator=generator), LoopState()

    stop_at = t.max_steps if step_budget is None else min(t.max_steps, state.step + step_budget)
    bar = tqdm(
        total=t.max_steps,
        initial=state.step,
        desc=f"train {config.model.arch}",
        unit="step",
        file=sys.stderr,
        disable=not progress or not sys.stderr.isatty(),
        leave=False,
    )
    model.train()
    try:
        while state.step < stop_at and not state.stopped_early:
            if state.position >= train_split.size:
                order = torch.randperm(train_split.size, generator=generator)
                state.epoch, state.position = state.epoch + 1, 0
            index = order[state.position : state.position + t.batch_size]
            state.position += t.batch_size
            tick, cpu_tick = time.perf_counter(), time.process_time()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, state.step, state.lr_scale)
            loss = loss_fn(
                _outputs(model, train_split.tokens(index), binary), train_split.targets(index)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            state.loss_sum += loss.item()
            state.loss_count += 1
            state.train_seconds += time.perf_counter() - tick
            state.train_cpu_seconds += time.process_time() - cpu_tick
            state.step += 1
            bar.update(1)
            if state.step % t.eval_every == 0 or state.step == t.max_steps:
                val_loss, _ = _evaluate(model, val_split)
                train_loss = state.loss_sum / max(state.loss_count, 1)
                rate = optimizer.param_groups[0]["lr"]
                state.history.append([state.step, train_loss, val_loss, rate])
                state.loss_sum, state.loss_count = 0.0, 0
                if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                    raise TrainingDiverged(
                        f"run {config.run_id} diverged at step {state.step}: training loss "
                        f"{train_loss}, validation loss {val_loss} (lr {rate:g}); lower "
                        f"train.lr or set train.grad_clip",
                        state.step,
                    )
                if logger is not None:
                    logger(state.step, {"train_loss": train_loss, "val_loss": val_loss, "lr": rate})
                update_stopping(state, t, val_loss)
                if state.best_step == state.step:
                    best_weights = copy.deepcopy(model.state_dict())
                bar.set_postfix(val_loss=f"{val_loss:.3g}")
            if checkpoints and state.step % t.checkpoint_every == 0:
                checkpoints.save(model, best_weights, optimizer, order, generator, state)
    except KeyboardInterrupt:
        if checkpoints:
            checkpoints.save(model, best_weights, optimizer, order, generator, state)
        raise
    finally:
        bar.close()

    finished = state.step >= t.max_steps or state.stopped_early
    if not finished:
        if checkpoints:
            checkpoints.save(model, best_weights, optimizer, order, generator, state)
        return RunResult(
            config.run_id,
            config.model_dump(mode="json"),
            config.seed,
            "partial",
            {"steps": state.step},
            {"train_seconds": state.train_seconds},
            versions={**versions(), "device": str(device)},
            started_at=started_at,
            finished_at=_now(),
            curve=_curve(state.history),
        )

    model.load_state_dict(best_weights)
    eval_start = time.perf_counter()
    test_loss, test_out = _evaluate(model, test_split)
    scores = task.score(test_batch, _predictions(test_out, binary))
    train_probe = _Split(
        task, train_batch.select(slice(0, min(train_split.size, t.n_val))), dtype, device
    )
    train_loss, _ = _evaluate(model, train_probe)
    eval_seconds = time.perf_counter() - eval_start
    metrics = {
        **{k: float(v) for k, v in scores.items()},
        "test_loss": test_loss,
        "train_loss": train_loss,
        "best_val_loss": state.best_val,
        "steps": state.step,
        "best_step": state.best_step,
        "epochs": state.epoch,
        "stopped_early": bool(state.stopped_early),
        "stop_reason": "plateau" if state.stopped_early else "budget",
        "lr_cuts": state.lr_cuts,
        "threshold": float(task.threshold),
        "reached_threshold": bool(float(scores["max_error"]) <= float(task.threshold)),
        "n_params": count_parameters(model),
    }
    result = RunResult(
        config.run_id,
        config.model_dump(mode="json"),
        config.seed,
        "ok",
        metrics,
        {
            "train_seconds": state.train_seconds,
            "train_cpu_seconds": state.train_cpu_seconds,
            "eval_seconds": eval_seconds,
            "wall_seconds": time.perf_counter() - wall_start,
            # CPU time of this process: what the run costs on an idle machine
            "cpu_seconds": time.process_time() - cpu_start,
            "train_examples_per_second": state.step
            * t.batch_size
            / max(state.train_seconds, 1e-12),
        },
        versions={**versions(), "device": str(device)},
        started_at=started_at,
        finished_at=_now(),
        curve=_curve(state.history),
    )
    if run_path is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in best_weights.items()},
            str(run_path / "model.safetensors"),
        )
        atomic_write(run_path / "result.json", json.dumps(result.to_dict()))
    return result
