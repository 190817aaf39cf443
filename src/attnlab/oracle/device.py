"""Targets on a torch device, and an Oracle that hands them torch queries without a host round trip.

- `DeviceTarget(module, device="cuda")`: the module moved to `device` (in its own dtype, or
  `dtype=`), answering numpy or torch batches (B, N, d) with a float64 numpy array (B,), and
  timing itself: `seconds` is the wall time inside the module (synchronised on CUDA),
  `cpu_seconds` the calling thread's CPU time there (what a shared machine's load does not inflate).
- `TimedTarget(fn)`: any numpy target, timed the same way (what benchmarks wrap a target in to
  split the learner's time from the target's).
- `DeviceOracle(target, device="cuda")`: an `Oracle` whose queries may be torch tensors living on
  `device`. They are validated, de-duplicated (identical sequences of one batch are answered and
  paid once, as by `Oracle`), counted and budgeted on the device and handed to the target as
  they are; only the answers (one float per query) come back to the host. The single-head
  extractor sees `oracle.device` and writes its probes into a buffer on that device, so a
  d = 4096 full-rank extraction moves 16.8M answers, not 1.1 TB of queries, across the bus.
  Noise models and journals are host-side features: use `Oracle` for them.

The same code runs with device="cpu" (that is what the tests exercise when no GPU is present).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from attnlab.errors import BudgetExhausted, OracleError, QueryShapeError
from attnlab.oracle.checks import (
    NON_FINITE_QUERY,
    all_finite,
    check_query_shape,
    far_apart,
    row_hashes,
)
from attnlab.oracle.journal import distinct_queries
from attnlab.oracle.oracle import Oracle
from attnlab.oracle.pad import PadBatch
from attnlab.oracle.targets import (
    as_numpy_target,
    complex_query_message,
    declared_width,
    real_answers,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedTarget:
    """A target (callable or torch module) that accumulates the wall seconds (and calls, sequences) spent inside it."""

    def __init__(self, target, d: int | None = None):
        self.d = d if d is not None else declared_width(target)
        self.target = as_numpy_target(target)
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # CPU time of the calling thread inside the target (load-proof)
        self.calls = 0
        self.sequences = 0
        self.largest = 0  # the largest batch it was handed

    def __call__(self, X):
        self.largest = max(self.largest, int(X.shape[0]))
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.target(X)
        finally:
            self.seconds += time.perf_counter() - started
            self.cpu_seconds += time.thread_time() - cpu
            self.calls += 1
            self.sequences += int(X.shape[0])


class DeviceTarget:
    """A torch module evaluated on `device`; numpy or torch batches in, float64 numpy answers out."""

    def __init__(
        self,
        module: torch.nn.Module,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "DeviceTarget(device='cuda') needs a CUDA GPU, and torch sees none; "
                "use device='cpu' (same code path) or run on a GPU machine"
            )
        param = next(iter(module.parameters()), None)
        self.dtype = dtype or (param.dtype if param is not None else torch.float64)
        self.module = module.to(device=self.device, dtype=self.dtype).eval()
        self.d = getattr(module, "d", None)
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # CPU time of the calling thread inside the module (load-proof)
        self.calls = 0
        self.sequences = 0

    def answer_tensor(self, X: torch.Tensor) -> torch.Tensor:
        """Answers as a tensor on the device (no host copy): the fast path's entry point."""
        started, cpu = time.perf_counter(), time.thread_time()
        if X.device != self.device or X.dtype != self.dtype:
            X = X.to(device=self.device, dtype=self.dtype)
        if torch.is_grad_enabled():  # no_grad, without the context manager's per-call cost
            torch.set_grad_enabled(False)
            try:
                out = self.module(X)
            finally:
                torch.set_grad_enabled(True)
        else:
            out = self.module(X)
        _sync(self.device)
        self.seconds += time.perf_counter() - started
        self.cpu_seconds += time.thread_time() - cpu
        self.calls += 1
        self.sequences += int(X.shape[0])
        return out

    def __call__(self, X) -> np.ndarray:
        X = torch.as_tensor(X)
        return real_answers(self.answer_tensor(X), f"the module {type(self.module).__name__}")


class DeviceOracle(Oracle):
    """An Oracle for a `DeviceTarget` that accepts torch queries on the target's device."""

    def __init__(
        self,
        target,
        d: int | None = None,
        budget: int | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **options,
    ):
        for option in ("noise", "journal", "timeout"):
            if options.get(option) is not None:
                raise ValueError(
                    f"DeviceOracle does not take {option}= (a host-side feature); "
                    f"use attnlab.Oracle for it"
                )
        if not isinstance(target, DeviceTarget):
            if not isinstance(target, torch.nn.Module):
                raise TypeError(
                    f"DeviceOracle needs a torch.nn.Module or a DeviceTarget, got "
                    f"{type(target).__name__}"
                )
            target = DeviceTarget(target, device or "cpu", dtype)
        elif device is not None and torch.device(device) != target.device:
            raise ValueError(
                f"the DeviceTarget lives on {target.device}, device={device!r} was asked for"
            )
        super().__init__(target, d=d, budget=budget, **options)
        self.device_target = target
        self.device = target.device
        self.query_dtype = torch.float64
        self._hash_vectors: dict[int, torch.Tensor] = {}

    def __call__(self, X):
        hashes = None
        if isinstance(X, PadBatch):
            if self.device.type != "cpu":
                raise ValueError(
                    f"a QueryPad lives on the host; this DeviceOracle's target is on {self.device}: "
                    f"write the queries into a tensor on that device instead"
                )
            hashes = X.hashes()
            X = X.tensor if isinstance(X.tensor, torch.Tensor) else torch.from_numpy(X.array)
        elif not isinstance(X, torch.Tensor):
            return super().__call__(X)
        batch = self._validate_tensor(X)
        single = batch.ndim == 2
        if single:
            batch = batch[None]
        if batch.shape[0] == 0:
            return np.empty(0)
        with self._lock:
            if hashes is not None and batch is X:
                first, inverse = self._distinct_on_host(batch.numpy(), hashes)
            else:
                first, inverse = self._distinct(batch)
            fresh = batch.shape[0] if first is None else int(first.shape[0])
            if self.budget is not None and self._paid + fresh > self.budget:
                raise BudgetExhausted(self._paid, self.budget, fresh)
            queries = batch if first is None else batch[first]
            step = self.max_batch or fresh
            parts = []
            for start in range(0, fresh, step):
                part = queries[start : start + step]
                self._paid += int(part.shape[0])
                try:
                    parts.append(self.device_target.answer_tensor(part).reshape(-1))
                except Exception as exc:
                    raise OracleError(
                        f"the target raised {type(exc).__name__}: {exc} for a batch of shape "
                        f"{tuple(part.shape)}; its {part.shape[0]} sequences count as paid."
                    ) from exc
            answers = parts[0] if len(parts) == 1 else torch.cat(parts)
            if answers.shape != (fresh,):
                raise OracleError(
                    f"the target must return one number per sequence, shape ({fresh},); it "
                    f"returned shape {tuple(answers.shape)}. The sequences sent count as paid."
                )
            if first is not None:
                answers = answers[inverse]
            if answers.dtype == torch.float64 and answers.device.type == "cpu":
                y = answers.detach().numpy()  # real already: no conversion to check
            else:
                y = real_answers(answers, "the target")
            # a finite sum proves every answer finite (a NaN or an infinity would make it so)
            if not math.isfinite(float(y.sum())) and not np.all(np.isfinite(y)):
                i = int(np.flatnonzero(~np.isfinite(y))[0])
                raise OracleError(
                    f"the target answered {y[i]} for query {i} of this batch; answers must be "
                    f"finite. The queries were counted. Check the target's numerics."
                )
            self._answered_once = True
            self._queries += int(batch.shape[0])
        return float(y[0]) if single else y

    def _distinct(self, batch: torch.Tensor):
        """(first, inverse) of the distinct sequences, or (None, None) when all are distinct.

        One matrix-vector product hashes every sequence; only sequences whose hashes tie are
        compared entry by entry, so a batch of distinct probes costs one pass. Identical sequences
        always tie (same entries, same arithmetic); a tie between different ones is resolved by the
        comparison, so two different sequences are never merged.
        """
        n = batch.shape[0]
        if batch.device.type == "cpu":
            return self._distinct_on_host(batch.numpy())
        flat = batch.reshape(n, -1)
        width = flat.shape[1]
        key = self._hash_vectors.get(width)
        if key is None:
            g = torch.Generator().manual_seed(0x61746E)
            key = torch.rand(width, generator=g, dtype=torch.float64).to(self.device) + 0.5
            self._hash_vectors[width] = key
        hashes = flat @ key
        # a NaN or infinite entry makes its hash non-finite; only then is the batch scanned
        if not bool(torch.isfinite(hashes).all()) and not bool(torch.isfinite(batch).all()):
            raise QueryShapeError(NON_FINITE_QUERY)
        if n < 2:
            return None, None
        order = torch.argsort(hashes)
        sorted_hashes = hashes[order]
        ties = torch.nonzero(sorted_hashes[1:] == sorted_hashes[:-1]).reshape(-1)
        if ties.numel() == 0:
            return None, None
        same = torch.zeros(n, dtype=torch.bool, device=self.device)
        left, right = order[ties], order[ties + 1]
        same[ties + 1] = (flat[left] == flat[right]).all(dim=1)
        if not bool(same.any()):
            return None, None
        # representative of each run of byte-identical sequences: the run's first element in order
        group = torch.cumsum(~same, dim=0) - 1  # group id along the sorted order
        inverse_sorted = group
        firsts = order[~same]
        inverse = torch.empty(n, dtype=torch.long, device=self.device)
        inverse[order] = inverse_sorted
        return firsts, inverse

    def _distinct_on_host(self, batch: np.ndarray, hashes: np.ndarray | None = None):
        """The CPU case of `_distinct`, on a view of the tensor's memory: one BLAS pass hashes every
        sequence, and the same hashes prove the batch finite (`checks.row_hashes`); only sequences
        whose hashes nearly tie are compared byte for byte (`journal.distinct_queries`).
        `hashes`: a `QueryPad`'s kept hashes of these sequences (then no pass, see oracle/pad.py)."""
        if hashes is None:
            hashes = row_hashes(batch)
        if far_apart(hashes):  # the usual case: finite hashes, no two near: finite and distinct
            return None, None
        if not all_finite(batch, hashes):
            raise QueryShapeError(NON_FINITE_QUERY)
        first, inverse = distinct_queries(batch, hashes)
        if first.size == batch.shape[0]:
            return None, None
        return torch.from_numpy(first), torch.from_numpy(inverse)

    def _validate_tensor(self, X: torch.Tensor) -> torch.Tensor:
        """The checks of `checks.valid_query` (same messages) on a tensor, without leaving its
        device; finiteness is checked by `_distinct`, in the same pass as the hash."""
        if X.is_complex():
            raise QueryShapeError(complex_query_message(X.dtype))
        check_query_shape(tuple(X.shape), self.d)
        if self.d is None:
            self.d = int(X.shape[-1])
        if X.device == self.device and X.dtype == self.query_dtype:
            return X
        return X.to(device=self.device, dtype=self.query_dtype)


__all__ = ["DeviceOracle", "DeviceTarget", "TimedTarget"]
