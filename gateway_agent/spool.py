"""The agent's spool directories (issue 13 item 3: stale spool directories are removed at start-up).

Layout: ``<work_dir>/archsync-agent-spool/run-<random>/<job id>-<random>/``. Each running agent
holds an exclusive ``flock`` on its run directory's ``.lock`` file for as long as it lives; the
kernel drops the lock when the process dies, however it dies. At start-up every run directory
whose lock can be taken belongs to an agent that is gone, and is removed with what it holds (the
half-fetched studies of a crashed run). Nothing else under ``work_dir`` is touched, and a second
agent sharing the same ``work_dir`` keeps its files."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: stale directories are left for the operator
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("gateway_agent.spool")
ROOT_NAME = "archsync-agent-spool"
LOCK_NAME = ".lock"
NEW_RUN_GRACE_SECONDS = 60  # a run directory this young may be one whose lock is being taken


def _try_lock(path: Path):
    """An open, exclusively locked file object, or None if another live process holds it."""
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


class Spool:
    def __init__(self, work_dir: Optional[str]):
        self.root = Path(work_dir or tempfile.gettempdir()) / ROOT_NAME
        self.run_dir: Optional[Path] = None
        self._lock_file = None

    def open(self) -> Path:
        """Remove stale run directories, then create and lock this run's own."""
        self.root.mkdir(parents=True, exist_ok=True)
        removed = remove_stale(self.root)
        if removed:
            log.info("removed stale spool directories of a previous run", extra={"count": removed, "spool": str(self.root)})
        self.run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
        if fcntl is not None:
            self._lock_file = _try_lock(self.run_dir / LOCK_NAME)
        return self.run_dir

    def close(self) -> None:
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
        self.run_dir, self._lock_file = None, None


def remove_stale(root: Path) -> int:
    """Remove the run directories under ``root`` no live agent holds; returns how many."""
    if fcntl is None or not root.is_dir():
        return 0
    removed = 0
    for run in root.iterdir():
        if not (run.is_dir() and run.name.startswith("run-")):
            continue
        lock = run / LOCK_NAME
        if not lock.exists():
            try:
                young = time.time() - run.stat().st_mtime < NEW_RUN_GRACE_SECONDS
            except OSError:
                continue
            if young:
                continue
            shutil.rmtree(run, ignore_errors=True)
            removed += 1
            continue
        f = _try_lock(lock)
        if f is None:
            continue  # a live agent's
        try:
            shutil.rmtree(run, ignore_errors=True)
            removed += 1
        finally:
            f.close()
    return removed


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free



