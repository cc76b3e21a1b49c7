"""The agent's config file as the admin page edits it: read, change ``job_deliveries``, check the
whole file with the agent's own parser, and write it atomically (a temporary file in the same
directory, fsync, os.replace, then fsync of the directory), mode 0600: it holds the keys. A crash
leaves the old file or the new one, never a mix."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

from ..config import AgentConfig, ConfigError, parse


class StaleConfig(Exception):
    """The file changed since the form was shown (another administrator, or a hand edit)."""


class ConfigFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self) -> tuple[dict, str]:
        """(the file's JSON, its version: a hash of its bytes)."""
        data = self.path.read_bytes()
        return json.loads(data), hashlib.sha256(data).hexdigest()[:32]

    def update(self, change: Callable[[dict], None], version: str | None = None) -> AgentConfig:
        """Apply ``change`` to the file's JSON and save it if the agent accepts the result; raises
        StaleConfig when ``version`` is given and the file moved on, ConfigError when the result
        is invalid (nothing written)."""
        with self._lock:
            raw, current = self.read()
            if version is not None and version != current:
                raise StaleConfig()
            change(raw)
            cfg = parse(raw)
            write_atomically(self.path, (json.dumps(raw, indent=2) + "\n").encode())
            return cfg


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(str(path.parent), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


__all__ = ["ConfigFile", "ConfigError", "StaleConfig", "write_atomically"]
