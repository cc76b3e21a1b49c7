#!/usr/bin/env python3
"""Build each function's deploy bundle: functions/<name>/ (main.py and any files beside it, e.g.
admin_api's console/) + the ``shared`` package + the
pinned requirements, as real files (no symlinks: deploy tools do not follow them), in
build/bundles/<name>/ and a reproducible build/bundles/<name>.zip (fixed timestamps and order, so
an unchanged bundle keeps its MD5 and Terraform does not redeploy it)."""
from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_SKIP = {"__pycache__", ".pytest_cache"}


def function_names() -> list[str]:
    return sorted(p.parent.name for p in (REPO / "functions").glob("*/main.py"))


def _files(root: Path):
    for path in sorted(root.rglob("*")):
        if any(part in _SKIP for part in path.relative_to(root).parts) or path.suffix == ".pyc":
            continue
        if path.is_file():
            yield path


def build(name: str, out_dir: Path) -> Path:
    bundle = out_dir / name
    if bundle.exists():
        shutil.rmtree(bundle)
    (bundle / "shared").mkdir(parents=True)
    for src in _files(REPO / "functions" / name):  # main.py and its own files (admin_api: console/)
        dst = bundle / src.relative_to(REPO / "functions" / name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    shutil.copyfile(REPO / "requirements.txt", bundle / "requirements.txt")
    for src in _files(REPO / "shared"):
        dst = bundle / "shared" / src.relative_to(REPO / "shared")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)  # copyfile writes contents: a symlink becomes a real file
    archive = out_dir / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in _files(bundle):
            info = zipfile.ZipInfo(str(path.relative_to(bundle)), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bundles")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in function_names():
        print(build(name, args.out))


if __name__ == "__main__":
    main()
