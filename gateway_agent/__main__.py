"""``python -m gateway_agent --config agent.json`` runs the agent until SIGINT/SIGTERM;
``--check`` only validates the config file."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import datetime, timezone
from typing import Optional

from .config import ConfigError, load

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line (severity, message, ids); the agent never logs patient data,
    keys or the service-account file."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"severity": record.levelname, "message": record.getMessage(), "logger": record.name,
               "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               **{k: v for k, v in vars(record).items() if k not in _STANDARD}}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("gateway_agent")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway_agent", description="Archive Synchronization reference gateway agent")
    parser.add_argument("--config", help="path of the agent's JSON config file")
    parser.add_argument("--check", action="store_true", help="validate the config file and exit")
    parser.add_argument("--hash-password", action="store_true",
                        help="read the admin page's password (twice, not echoed) and print its hash for admin_page.password_hash")
    args = parser.parse_args(argv)
    if args.hash_password:
        return _hash_password()
    if not args.config:
        parser.error("--config is required")
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"gateway_agent: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"config OK: {len(cfg.active_deliveries)} active of {len(cfg.deliveries)} job deliveries")
        return 0
    if not cfg.active_deliveries and not cfg.admin_page:
        print("gateway_agent: no active job delivery (seed 000 Step 3.4: enable the Active flag)", file=sys.stderr)
        return 2
    configure_logging()
    from .agent import Agent

    agent = Agent(cfg).start()
    admin = None
    if cfg.admin_page:
        from .admin.config_file import ConfigFile
        from .admin.server import AdminServer

        admin = AdminServer(agent, ConfigFile(args.config), cfg.admin_page).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    if admin:
        admin.stop()
    agent.stop()  # running jobs finish and settle their messages first
    return 0


def _hash_password() -> int:
    import getpass

    from .admin.passwords import hash_password

    first = getpass.getpass("Admin page password: ")
    if first != getpass.getpass("Again: "):
        print("gateway_agent: the two passwords differ", file=sys.stderr)
        return 2
    try:
        print(hash_password(first))
    except ValueError as e:
        print(f"gateway_agent: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
