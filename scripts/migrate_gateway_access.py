#!/usr/bin/env python3
"""Moves gateways provisioned before managed folders to them (docs/scale.md, "Migration").

Each gateway of the given facility groups gets read access through its managed folders
(gateways/<id>/ in the generated-objects bucket, <facility_group_id>/ in the study bucket) before
its conditional binding on each bucket's own policy is removed, so it never loses access.
Idempotent: run it again after a failure. Reads the same ARCHSYNC_* environment as admin_api
(ARCHSYNC_PROJECT_ID, ARCHSYNC_OBJECTS_BUCKET, ARCHSYNC_STUDY_BUCKET, ARCHSYNC_KEY_BUCKET) and runs
with the caller's application default credentials, which need what admin_api has on those buckets.

    python scripts/migrate_gateway_access.py fg-north fg-south
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("facility_groups", nargs="+", help="facility group ids whose gateways to move")
    args = ap.parse_args(argv)

    from shared import wiring
    from shared.settings import Settings

    settings = Settings.from_env(os.environ, function="admin_api")
    store, provisioner = wiring.firestore_store(settings), wiring.provisioner(settings)
    moved = 0
    for fg in args.facility_groups:
        for gateway in store.list_gateways(fg):
            if gateway.provisioning_state != "READY" or not gateway.service_account_email:
                print(f"{fg}/{gateway.id}: skipped ({gateway.provisioning_state})")
                continue
            provisioner.migrate_bucket_access(gateway)
            moved += 1
            print(f"{fg}/{gateway.id}: on managed folders")
    print(f"{moved} gateway(s) on managed folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
