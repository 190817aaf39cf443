"""Which server processes sharing a keys database are alive: one held file lock per server.

A server that is killed (kill -9 included) loses its lock at once, because the kernel releases
it with the process. So a pending idempotency record whose owner holds no lock belongs to a dead
server: its charge can be refunded, or a retry can take it over, without waiting for a timeout.
Where file locks are unavailable (no fcntl), every owner counts as alive and the old timeout rule
(take over a pending record after `stale_after_s`) is all that remains.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None


class ServerInstance:
    """This process's identity for one keys database, held as a locked file next to it."""

    def __init__(self, db_path: Path):
        self.folder = Path(str(db_path) + ".servers")
        self.id = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._file = None
        if fcntl is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.folder / f"{self.id}.lock", "w")  # noqa: SIM115 - held for life
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def is_alive(self, owner: str | None) -> bool:
        """Whether the server that wrote `owner` still runs (unknown owners count as alive)."""
        if owner == self.id:
            return True
        if fcntl is None or not owner or "/" in owner or owner.startswith("."):
            return owner is not None
        path = self.folder / f"{owner}.lock"
        try:
            probe = open(path)  # noqa: SIM115
        except FileNotFoundError:
            return False  # removed by its server at a clean exit, or by a previous probe
        with probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            path.unlink(missing_ok=True)
            return False

    def close(self) -> None:
        if self._file is not None:
            (self.folder / f"{self.id}.lock").unlink(missing_ok=True)
            self._file.close()
            self._file = None
            try:
                self.folder.rmdir()  # only if no other server is registered
            except OSError:
                pass
