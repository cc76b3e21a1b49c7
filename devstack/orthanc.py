"""Orthanc (Debian package ``orthanc``) as a real, independent DICOM archive: its own config,
storage and index directories, free ports, loopback traffic only (``../shared/TESTSTACK.md``)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from devstack.processes import free_port


class Orthanc:
    def __init__(self, workdir: Path, ae_title: str = "ORTHANC", modalities: Optional[dict[str, tuple[str, int]]] = None):
        self.workdir, self.ae_title = Path(workdir), ae_title
        self.modalities = dict(modalities or {})
        self.dicom_port = self.http_port = 0
        self._proc: Optional[subprocess.Popen] = None

    @staticmethod
    def available() -> bool:
        return shutil.which("Orthanc") is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, dicom_port: int = 0, http_port: int = 0) -> "Orthanc":
        """Start (or restart on the same ports, keeping its stored data)."""
        self.dicom_port = dicom_port or self.dicom_port or free_port()
        self.http_port = http_port or self.http_port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "archsync-test", "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"), "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [], "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True, "DicomScpTimeout": 5,
            "DicomModalities": {aet.lower(): [aet, host, port] for aet, (host, port) in self.modalities.items()},
            "StableAge": 1, "ConcurrentJobs": 2, "HttpThreadsCount": 8,
            # A throwaway test archive: no fsync per stored file (Orthanc "SyncStorageArea").
            "SyncStorageArea": False,
        }
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        log = open(self.workdir / "orthanc.log", "ab")
        # DCMTK (inside Orthanc) leaves Nagle's algorithm on unless TCP_NODELAY=1: with delayed ACKs
        # that costs ~100 ms per C-STORE response.
        self._proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self._proc.returncode}; see {self.workdir / 'orthanc.log'}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not start within 30 s")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None

    # -- REST ---------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, method=method, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def study_instances(self, study_uid: str) -> set[str]:
        """SOP instance UIDs Orthanc holds for a study."""
        found = self._call("POST", "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})
        return {inst["MainDicomTags"]["SOPInstanceUID"] for inst in found}

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The Part-10 file Orthanc stored for an instance."""
        ids = self._call("POST", "/tools/lookup", sop_instance_uid)
        with urllib.request.urlopen(f"{self.url}/instances/{ids[0]['ID']}/file", timeout=30) as resp:
            return resp.read()

    def delete_all(self) -> None:
        for pid in self.get("/patients"):
            try:
                self._call("DELETE", f"/patients/{pid}")
            except urllib.error.HTTPError:
                pass
