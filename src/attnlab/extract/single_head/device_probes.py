"""The probe writer on a torch device (used when the oracle has a `device`, see oracle/device.py).

Same queries as `reader.write_queries`, written into a buffer that lives on the device, so a GPU
target is handed its queries without a host round trip. Index arrays and the directions' small
factors are copied to the device once and cached.
"""

from __future__ import annotations

import numpy as np
import torch

from attnlab.extract.single_head.directions import (
    AlignedBasis,
    CoordinateDirections,
    DenseDirections,
    Directions,
)


class DeviceWriter:
    def __init__(self, device: torch.device):
        self.device = device
        self._cache: dict[int, tuple[object, torch.Tensor]] = {}

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """array on the device, cached by identity (the reader reuses its index arrays)."""
        hit = self._cache.get(id(array))
        if hit is not None and hit[0] is array:
            return hit[1]
        out = torch.as_tensor(np.ascontiguousarray(array), device=self.device)
        self._cache[id(array)] = (array, out)
        return out

    def write(self, out: torch.Tensor, dirs: Directions, index, scale: float) -> None:
        """out[k] = scale * dirs[index[k]] (index an int: the same row for every k)."""
        n = out.shape[0]
        if isinstance(index, (int, np.integer)):
            row = self._row(dirs, int(index))
            out.copy_((row * scale).expand(n, -1))
            return
        idx = torch.as_tensor(index, device=self.device)
        if isinstance(dirs, CoordinateDirections):
            out.zero_()
            out[torch.arange(n, device=self.device), idx] = scale
        elif isinstance(dirs, AlignedBasis):
            coef, basis = self.tensor(dirs._coef), self.tensor(dirs._basis)
            torch.matmul(coef[idx] * (-2.0 * scale), basis, out=out)
            out[torch.arange(n, device=self.device), idx] += scale
        elif isinstance(dirs, DenseDirections):
            torch.mul(self.tensor(dirs.rows)[idx], scale, out=out)
        else:
            raise TypeError(f"no device writer for {type(dirs).__name__}")

    def _row(self, dirs: Directions, i: int) -> torch.Tensor:
        if isinstance(dirs, DenseDirections):
            return self.tensor(dirs.rows)[i]
        if isinstance(dirs, AlignedBasis):
            return torch.as_tensor(dirs.row(i), device=self.device)
        row = torch.zeros(dirs.d, dtype=torch.float64, device=self.device)
        row[i] = 1.0
        return row

    def write_queries(
        self,
        X0: torch.Tensor,
        X1: torch.Tensor,
        a_dirs: Directions,
        ai,
        mu: float,
        b_dirs: Directions,
        bi,
        nu: float,
    ) -> None:
        self.write(X1, b_dirs, bi, nu)
        self.write(X0, a_dirs, ai, mu)
        X0 += X1
