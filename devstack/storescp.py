"""dcmtk's ``storescp`` with its default settings (it accepts only the uncompressed transfer
syntaxes) on a free port, writing what it receives into a directory: the reference archive for
the agent's transcoding tests (issue 13 item 2)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from devstack.processes import free_port


class StoreSCP:
    def __init__(self, out_dir: Path, ae_title: str = "STORESCP", port: Optional[int] = None):
        self.out_dir, self.ae_title = Path(out_dir), ae_title
        self.port = port or free_port()
        self._proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 30.0) -> "StoreSCP":
        exe = shutil.which("storescp")
        if exe is None:
            raise RuntimeError("storescp not found: install dcmtk (./run installs it)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # -aet: the called AE title it answers to; -od: where files go (named by SOP Instance UID
        # with the modality prefix, storescp's default); nothing else: default transfer syntaxes.
        self._proc = subprocess.Popen([exe, "-aet", self.ae_title, "-od", str(self.out_dir), "-dhl", str(self.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise RuntimeError(f"storescp exited with {self._proc.returncode}: {self._proc.stderr.read()[:500]!r}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"storescp not listening on {self.port} after {timeout}s")

    def files(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    def stop(self) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
