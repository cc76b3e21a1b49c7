"""Start and stop the emulators and functions-framework servers (see ../shared/TESTSTACK.md)."""
from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Optional

SDK = Path(os.environ.get("ARCHSYNC_GCLOUD_SDK", "/usr/lib/google-cloud-sdk"))
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: Optional[subprocess.Popen] = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return  # answering at all means it is up
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s")


class Service:
    """A child process in its own session, so stopping it kills the whole group (JVMs included)."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str, env: Optional[Mapping[str, str]] = None,
                 log_dir: Optional[Path] = None, ready_timeout: float = 60.0):
        self.name, self.port = name, port
        self.host = f"127.0.0.1:{port}"
        log_dir = log_dir or Path(os.environ.get("ARCHSYNC_LOG_DIR", "/tmp"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})}, cwd=str(REPO))
        try:
            wait_http(f"http://{self.host}{ready_path}", ready_timeout, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"{name} did not start; see {self.log_path}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self._log.close()


_JVM = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


def on_free_port(start: Callable[[int], Service], attempts: int = 3) -> Service:
    """``start(port)`` on a free port, again on another if it fails: between free_port() closing
    its probe socket and the child binding the port, another process (a second test run on the
    same machine) may take it ("Address already in use")."""
    for attempt in range(attempts):
        try:
            return start(free_port())
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def start_firestore(log_dir: Optional[Path] = None) -> Service:
    jar = SDK / "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
    return on_free_port(lambda port: Service("firestore-emulator", [
        "java", "-Duser.language=en", *_JVM, "-cp", str(jar), "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
        "--host", "127.0.0.1", "--port", str(port)], port, "/", log_dir=log_dir))


def start_pubsub(log_dir: Optional[Path] = None) -> Service:
    jars = sorted(glob.glob(str(SDK / "platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar")))
    if not jars:
        raise RuntimeError("Pub/Sub emulator jar not found: is the Google Cloud CLI installed?")
    return on_free_port(lambda port: Service(
        "pubsub-emulator", ["java", *_JVM, "-jar", jars[-1], "--host=127.0.0.1", f"--port={port}"], port, "/",
        log_dir=log_dir))


def start_function(target: str, env: Mapping[str, str], log_dir: Optional[Path] = None) -> Service:
    """Serve functions/<target>/main.py with functions-framework, ``shared`` importable from the repo."""
    env = {**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return on_free_port(lambda port: Service(target, [
        sys.executable, "-m", "functions_framework", "--target", target, "--source", str(REPO / "functions" / target / "main.py"),
        "--host", "127.0.0.1", "--port", str(port)], port, "/__ready__", env=env, log_dir=log_dir))


def reset_firestore(host: str, project: str) -> None:
    req = urllib.request.Request(f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents", method="DELETE")
    urllib.request.urlopen(req, timeout=10).read()
