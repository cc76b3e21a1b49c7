"""Fetching a job's Part-10 files from Cloud Storage into a spool directory (bounded memory:
a 2,000-image study never sits in RAM)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from math import ceil
from pathlib import Path
from typing import Any, Callable, Optional

from .dimse import Instance
from .spool import free_bytes

MB = 1024 * 1024


class FetchError(Exception):
    def __init__(self, reason: str, retryable: bool):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


def split_uri(uri: str) -> tuple[str, str]:
    """(bucket, object name or prefix) of a gs:// URI."""
    bucket, _, name = uri[5:].partition("/") if isinstance(uri, str) and uri.startswith("gs://") else ("", "", "")
    if not bucket:
        raise FetchError(f"not a gs:// URI: {uri!r}", retryable=False)
    return bucket, name


def study_prefix(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of a study's storage URI, which must be gs://<bucket>/<prefix>/ with a
    non-empty prefix ending in '/' (contract job-message.v1). ARCHITECTURE rule 9: a bare bucket
    would list every study, and a prefix without its '/' (…/1.2.3) also lists a sibling study
    (…/1.2.34/): an archive would receive another patient's images."""
    bucket, prefix = split_uri(uri)
    if not prefix.endswith("/") or "" in prefix[:-1].split("/"):
        raise FetchError(f"{uri}: not a study prefix (gs://<bucket>/<study prefix>/, ending in '/')", retryable=False)
    return bucket, prefix


class ObjectFetcher:
    """Downloads with the gateway's service account (seed 000 Step 3: the SA JSON key), always: its
    signed assertion buys an access token at the key's ``token_uri`` and every request carries it.
    One code path everywhere (ARCHITECTURE rule 10): the endpoint is ``storage_endpoint`` (agent
    config; Google's by default), passed to the client explicitly, so no emulator variable in the
    environment changes where requests go or how they are authenticated. On the local stack the
    endpoint is the authorising storage front and the key's ``token_uri`` the IAM stand-in's."""

    def __init__(self, service_account_info: dict, project_id: str, storage_endpoint: str, parallel: int = 8,
                 free_disk_margin_mb: float = 512.0):
        self._sa, self._project, self._parallel = service_account_info, project_id, parallel
        self._endpoint = storage_endpoint
        self._margin = int(free_disk_margin_mb * MB)
        self._client: Any = None
        self._lock = threading.Lock()

    def _storage(self):
        with self._lock:
            if self._client is None:
                from google.cloud import storage
                from google.oauth2 import service_account

                creds = service_account.Credentials.from_service_account_info(
                    self._sa, scopes=["https://www.googleapis.com/auth/devstorage.read_only"])
                # client_options' api_endpoint outranks STORAGE_EMULATOR_HOST (google-cloud-storage
                # Client.__init__), and explicit credentials are never swapped for anonymous ones.
                self._client = storage.Client(project=self._project, credentials=creds,
                                              client_options={"api_endpoint": self._endpoint})
            return self._client

    def _call(self, what: str, fn):
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        try:
            return fn()
        except auth_exc.RefreshError as e:  # the token endpoint refused the key (deleted, rotated out, account gone)
            why = str(e.args[0]) if e.args else type(e).__name__  # OAuth error text: no key material
            raise FetchError(f"{what}: the gateway's service-account key was refused ({why}); install the current "
                             "key (SA JSON download)", retryable=bool(getattr(e, "retryable", False))) from None
        except auth_exc.TransportError:
            raise FetchError(f"{what}: the token endpoint is unreachable", retryable=True) from None
        except gexc.NotFound:
            raise FetchError(f"{what}: not found in Cloud Storage", retryable=False) from None
        except gexc.Forbidden:
            raise FetchError(f"{what}: the gateway's service account may not read it", retryable=False) from None
        except (gexc.GoogleAPICallError, gexc.RetryError, OSError) as e:
            raise FetchError(f"{what}: Cloud Storage unavailable ({type(e).__name__})", retryable=True) from None

    def fetch_prefix(self, uri: str, into: Path) -> list[Path]:
        """Every object under a gs:// prefix (the study's Part-10 files), after checking there is
        room for all of them."""
        bucket, names, sizes = self.list_prefix(uri)
        self.check_space(into, sum(sizes))
        return self._download_all(bucket, names, into)

    def list_prefix(self, uri: str) -> tuple[str, list[str], list[int]]:
        """(bucket, object names, their sizes in bytes) of a study's files, without downloading
        them (the send pipeline downloads them one by one into a bounded spool:
        gateway_agent/pipeline.py)."""
        bucket, prefix = study_prefix(uri)
        client = self._storage()
        listed = self._call(uri, lambda: [(b.name, b.size or 0) for b in client.list_blobs(bucket, prefix=prefix)
                                          if not b.name.endswith("/")])
        if not listed:
            raise FetchError(f"{uri}: no files under the study's storage prefix", retryable=True)
        return bucket, [name for name, _ in listed], [size for _, size in listed]

    def download(self, bucket: str, name: str, path: Path) -> Path:
        """One object into ``path`` (FetchError as for every call here)."""
        b = self._storage().bucket(bucket)
        self._call(f"gs://{bucket}/{name}", lambda: b.blob(name).download_to_filename(str(path)))
        return path

    def check_space(self, into: Path, size: int) -> None:
        """Issue 13 item 3: files larger than the free space would fail half-way, after hours of
        download, and could fill the disk for every other job: check first, from the listing's
        sizes (``size``: what will be on disk at once). Retryable: other jobs' spools are removed
        as they finish."""
        into.mkdir(parents=True, exist_ok=True)
        have = free_bytes(into)
        need = size + self._margin
        if need > have:
            raise FetchError(f"not enough free disk space in WORK_DIR ({into.parent}): need {ceil(need / MB)} MB "
                             f"({ceil(size / MB)} MB of the study's files at once + {ceil(self._margin / MB)} MB margin), "
                             f"have {have // MB} MB", retryable=True)

    def fetch_object(self, uri: str, into: Path) -> Path:
        bucket, name = split_uri(uri)
        if not name or name.endswith("/"):
            raise FetchError(f"{uri}: not an object URI", retryable=False)
        return self._download_all(bucket, [name], into)[0]

    def _download_all(self, bucket: str, names: list[str], into: Path,
                      on_fetched: Callable[[int, int], None] = lambda done, total: None) -> list[Path]:
        client = self._storage()
        b = client.bucket(bucket)
        into.mkdir(parents=True, exist_ok=True)
        done, lock = [0], threading.Lock()

        def one(i_name: tuple[int, str]) -> Path:
            i, name = i_name
            path = into / f"{i:06d}.dcm"
            self._call(f"gs://{bucket}/{name}", lambda: b.blob(name).download_to_filename(str(path)))
            with lock:
                done[0] += 1
                n = done[0]
            on_fetched(n, len(names))
            return path

        with ThreadPoolExecutor(max_workers=min(self._parallel, len(names))) as pool:
            return list(pool.map(one, enumerate(names)))


def read_instance(path: Path) -> Optional[Instance]:
    """The identity of a Part-10 file, or None if it is not one. Read from the raw header
    (gateway_agent/part10.py: this runs for every instance on the send path), else by pydicom,
    which stops after Series Instance UID (0020,000E): the four identifiers are the first of the
    elements the agent needs in tag order (PS3.5 7.1), so the rest of the header and the pixel
    data are never parsed."""
    from .part10 import HEAD, SERIES, SOP_CLASS, SOP_INSTANCE, STUDY, Unsupported, identity

    try:
        with open(path, "rb") as f:
            syntax, ids = identity(f.read(HEAD))
        return Instance(ids[SOP_CLASS], ids[SOP_INSTANCE], ids.get(SERIES, ""), syntax, path, ids.get(STUDY, ""))
    except OSError:
        return None
    except Unsupported:
        return _read_instance_pydicom(path)


def _read_instance_pydicom(path: Path) -> Optional[Instance]:
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_partial

    try:
        with open(path, "rb") as f:
            ds = read_partial(f, stop_when=_after_identity, specific_tags=_IDENTITY)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta or "SOPInstanceUID" not in ds:
        return None
    return Instance(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.get("SeriesInstanceUID", "")),
                    str(meta.TransferSyntaxUID), path, str(ds.get("StudyInstanceUID", "")))


_IDENTITY = [0x00080016, 0x00080018, 0x0020000D, 0x0020000E]  # SOP Class, SOP Instance, Study, Series UIDs


def _after_identity(tag, vr, length) -> bool:
    return tag > 0x0020000E
