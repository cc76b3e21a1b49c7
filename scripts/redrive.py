#!/usr/bin/env python3
"""Dead-letter redrive for the platform team (issue 15 item 4; docs/operations-redrive.md).

    python -m scripts.redrive list [--kind inbound|gateway] [--state PARKED|REPLAYED] [--limit N] [--json]
    python -m scripts.redrive show ID [--json]
    python -m scripts.redrive replay ID [ID ...] [--operator NAME] [--json]

Runs as whoever runs it (application default credentials, e.g. `gcloud auth application-default
login`): it needs the Firestore and Pub/Sub roles docs/operations-redrive.md lists. The project and
topic names come from the same environment as the functions' (ARCHSYNC_PROJECT_ID or --project,
ARCHSYNC_DEAD_LETTER_TOPIC, ARCHSYNC_GATEWAY_DEAD_LETTER_TOPIC, ARCHSYNC_FIRESTORE_DATABASE).
It does what the admin API's /v1/operations/dead-letters endpoints do, through the same service.
Exit status: 0 done, 1 a replay failed, 2 bad input (unknown id, bad option), 3 retry later."""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from shared import wiring  # noqa: E402
from shared.domain.errors import ArchSyncError, Conflict, NotFound, TransientError, ValidationFailed  # noqa: E402
from shared.settings import Settings  # noqa: E402

COLUMNS = ("id", "state", "function", "reason_code", "original_topic", "original_message_id", "dead_lettered_at", "reason")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.redrive", description=__doc__.split("\n\n")[0])
    p.add_argument("--project", help="the deployment's project id (default: ARCHSYNC_PROJECT_ID)")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="collect and list dead-lettered messages (ids and reasons, never data)")
    ls.add_argument("--kind", choices=("inbound", "gateway"))
    ls.add_argument("--state", choices=("PARKED", "REPLAYED"), default="PARKED")
    ls.add_argument("--all", action="store_true", help="every state (default: PARKED only)")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--page-token")
    ls.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one dead letter")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    rp = sub.add_parser("replay", help="publish dead letters back to their original topic (after the fix)")
    rp.add_argument("ids", nargs="+")
    rp.add_argument("--operator", default="", help="recorded as who replayed (default: cli:<login name>)")
    rp.add_argument("--json", action="store_true")
    return p


def _table(rows: list[dict], out: TextIO) -> None:
    if not rows:
        out.write("no dead letters\n")
        return
    for row in rows:
        out.write("  ".join(f"{c}={row.get(c)}" for c in COLUMNS) + "\n")


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ)
    if args.project:
        env["ARCHSYNC_PROJECT_ID"] = args.project
    try:
        service = wiring.redrive_service(Settings.from_env(env, function="redrive"))
        if args.command == "list":
            query = {"limit": str(args.limit)}
            if args.kind:
                query["kind"] = args.kind
            if not args.all:
                query["state"] = args.state
            if args.page_token:
                query["page_token"] = args.page_token
            page = service.list(query)
            if args.json:
                out.write(json.dumps(page, indent=2) + "\n")
            else:
                _table(page["dead_letters"], out)
                if page["next_page_token"]:
                    out.write(f"more: --page-token {page['next_page_token']}\n")
                if any(page["left_in_subscription"].values()):
                    out.write(f"too large to index, left in the subscriptions: {page['left_in_subscription']}\n")
            return 0
        if args.command == "show":
            row = service.get(args.id)
            out.write(json.dumps(row, indent=2) + "\n" if args.json else "\n".join(f"{k}: {v}" for k, v in row.items()) + "\n")
            return 0
        operator = args.operator or f"cli:{getpass.getuser()}"
        result = service.replay({"ids": args.ids}, operator)
        if args.json:
            out.write(json.dumps(result, indent=2) + "\n")
        else:
            for r in result["results"]:
                out.write(f"{r['id']}: {r['outcome']} -> {r['topic']} {r['message_id'] or r['reason']}\n")
        return 0 if all(r["outcome"] == "replayed" for r in result["results"]) else 1
    except ValidationFailed as e:
        err.write(f"invalid: {json.dumps(e.errors)}\n")
        return 2
    except (NotFound, Conflict) as e:
        err.write(f"{e}\n")
        return 2
    except TransientError as e:
        err.write(f"temporarily unavailable, retry: {e}\n")
        return 3
    except ArchSyncError as e:
        err.write(f"failed: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
