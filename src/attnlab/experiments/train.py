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

import base64
import copy
import dataclasses
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm  # notebook widgets where available

from attnlab.errors import AttnlabError
from attnlab.experiments.config import RunConfig
from attnlab.experiments.models import build_model, count_parameters
from attnlab.experiments.results import CURVE_FIELDS, RunResult

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


def learning_rate(config: RunConfig, step: int, plateau_scale: float = 1.0) -> float:
    """The rate for optimiser step `step` (0-based): linear warmup, then constant, cosine to 0, or
    (schedule "plateau") the base rate times `plateau_scale`, the product of the cuts so far."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "plateau":
        return t.lr * plateau_scale
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return 0.5 * t.lr * (1 + math.cos(math.pi * min(progress, 1.0)))


def _output_dim(targets: np.ndarray) -> int:
    return 1 if targets.ndim == 2 else int(targets.shape[-1])


@dataclass
class _LoopState:
    step: int = 0
    epoch: int = 0
    position: int = 0
    best_val: float = float("inf")
    best_step: int = 0
    bad_evals: int = 0
    lr_scale: float = 1.0
    lr_bad_evals: int = 0
    lr_cuts: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    history: list[list[float]] = field(default_factory=list)


class _Checkpoints:
    """ckpt-<step>.safetensors + ckpt-<step>.json pairs in a run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def latest_step(self) -> int | None:
        steps = sorted(int(p.stem.split("-")[1]) for p in self.run_dir.glob("ckpt-*.json"))
        return steps[-1] if steps else None

    def save(self, model, best_weights, optimizer, order, generator, state: _LoopState) -> None:
        tensors = {
            f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()
        }
        tensors.update({f"best.{k}": v.clone().contiguous() for k, v in best_weights.items()})
        for index, slots in optimizer.state_dict()["state"].items():
            for name, value in slots.items():
                tensors[f"optim.{index}.{name}"] = (
                    torch.as_tensor(value).detach().clone().contiguous()
                )
        tensors["order"] = order.clone()
        stem = self.run_dir / f"ckpt-{state.step:09d}"
        tmp = stem.with_suffix(".safetensors.tmp")
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, stem.with_suffix(".safetensors"))
        meta = dataclasses.asdict(state)
        meta["order_rng"] = base64.b64encode(generator.get_state().numpy().tobytes()).decode()
        _atomic_write(stem.with_suffix(".json"), json.dumps(meta))
        for old in self.run_dir.glob("ckpt-*.json"):
            if old.stem != stem.name:
                old.unlink(missing_ok=True)
                old.with_suffix(".safetensors").unlink(missing_ok=True)

    def load(
        self, step: int, model, optimizer, generator, device
    ) -> tuple[dict, torch.Tensor, _LoopState]:
        stem = self.run_dir / f"ckpt-{step:09d}"
        meta = json.loads(stem.with_suffix(".json").read_text())
        tensors = load_file(str(stem.with_suffix(".safetensors")), device=str(device))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        optim_state = optimizer.state_dict()
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = value.cpu() if name == "step" else value
        optim_state["state"] = slots
        optimizer.load_state_dict(optim_state)
        rng = np.frombuffer(base64.b64decode(meta.pop("order_rng")), dtype=np.uint8).copy()
        generator.set_state(torch.from_numpy(rng))
        return best, tensors["order"].cpu(), _LoopState(**meta)


def _update_stopping(state: _LoopState, t, val_loss: float) -> None:
    """The plateau criterion: count passes without a relative improvement of min_delta; after
    lr_patience of them cut the rate (schedule "plateau"), after patience stop (from min_steps on)."""
    if val_loss < state.best_val * (1 - t.min_delta):
        state.best_val, state.best_step, state.bad_evals, state.lr_bad_evals = (
            val_loss,
            state.step,
            0,
            0,
        )
        return
    state.bad_evals += 1
    state.lr_bad_evals += 1
    # Before min_steps neither cut nor stop: a model still on its initial plateau is not converged.
    if (
        t.schedule == "plateau"
        and state.lr_bad_evals >= t.lr_patience
        and state.step >= t.min_steps
    ):
        state.lr_scale *= t.lr_decay
        state.lr_cuts += 1
        state.lr_bad_evals = 0
    state.stopped_early = state.bad_evals >= t.patience and state.step >= t.min_steps


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prepare_run_dir(run_dir: Path, config: RunConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.json"
    if config_file.exists():
        stored = RunConfig.model_validate_json(config_file.read_text())
        if stored.run_id != config.run_id:
            raise ValueError(
                f"{run_dir} holds run {stored.run_id}, not {config.run_id}; give each "
                f"config its own run directory (e.g. <runs>/<run_id>)"
            )
    else:
        _atomic_write(config_file, config.canonical_json())


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
        _prepare_run_dir(run_path, config)
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

    checkpoints = _Checkpoints(run_path) if run_path is not None else None
    latest = checkpoints.latest_step() if checkpoints else None
    if latest is not None:
        best_weights, order, state = checkpoints.load(latest, model, optimizer, generator, device)
    else:
        best_weights = copy.deepcopy(model.state_dict())
        order, state = torch.randperm(train_split.size, generator=generator), _LoopState()

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
                _update_stopping(state, t, val_loss)
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
        _atomic_write(run_path / "result.json", json.dumps(result.to_dict()))
    return result
