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
    ShiftedCoordinates,
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
        elif isinstance(dirs, ShiftedCoordinates):
            out.copy_((self.tensor(dirs.s) * scale).expand(n, -1))
            out[torch.arange(n, device=self.device), idx] += scale
        else:
            raise TypeError(f"no device writer for {type(dirs).__name__}")

    def _row(self, dirs: Directions, i: int) -> torch.Tensor:
        if isinstance(dirs, DenseDirections):
            return self.tensor(dirs.rows)[i]
        if isinstance(dirs, (AlignedBasis, ShiftedCoordinates)):
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
        """X0 = mu a + nu b, X1 = nu b, in as few passes over the buffer as `reader.write_queries`."""
        n = X0.shape[0]
        if isinstance(b_dirs, CoordinateDirections):
            # nu e_j: c scalars added to X0 and written into a zeroed X1, no pass for b
            self.write(X0, a_dirs, ai, mu)
            rows = torch.arange(n, device=self.device)
            cols = (
                int(bi)
                if isinstance(bi, (int, np.integer))
                else torch.as_tensor(bi, device=self.device)
            )
            X0[rows, cols] += nu
            X1.zero_()
            X1[rows, cols] = nu
            return
        if isinstance(bi, (int, np.integer)):
            b_row = self._row(b_dirs, int(bi)) * nu
            X1.copy_(b_row.expand(n, -1))
            if isinstance(ai, (int, np.integer)):
                X0.copy_((self._row(a_dirs, int(ai)) * mu + b_row).expand(n, -1))
            elif isinstance(a_dirs, AlignedBasis):
                # one (n x 3) @ (3 x d) product writes the directions and the added row
                idx = torch.as_tensor(ai, device=self.device)
                coef = torch.empty((n, 3), dtype=torch.float64, device=self.device)
                torch.mul(self.tensor(a_dirs._coef)[idx], -2.0 * mu, out=coef[:, :2])
                coef[:, 2] = 1.0
                basis = torch.cat([self.tensor(a_dirs._basis), b_row[None]])
                torch.matmul(coef, basis, out=X0)
                X0[torch.arange(n, device=self.device), idx] += mu
            else:
                self.write(X0, a_dirs, ai, mu)
                X0 += b_row
            return
        self.write(X1, b_dirs, bi, nu)
        self.write(X0, a_dirs, ai, mu)
        X0 += X1
