"""The `clipguard` command: worker, broker, run (broker + worker for development), keys."""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from streams.errors import ClipGuardError, ConfigError
from streams.settings import Settings


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except ClipGuardError as exc:  # a mistake the user can fix: say it in one line
        print(f"clipguard: error: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipguard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "worker", help="run one worker (pipeline + HTTP API) against CLIPGUARD_KAFKA_BOOTSTRAP"
    )
    sub.add_parser(
        "run", help="development: start the local broker, create a dev key, run a worker"
    )
    sub.add_parser("broker", help="the local Kafka broker: start|stop|status", add_help=False)
    keys = sub.add_parser("keys", help="API keys")
    keys.add_argument("action", choices=["add"])
    keys.add_argument("tenant")
    args, rest = parser.parse_known_args(argv)

    if args.command == "broker":  # development tooling, not part of a worker
        return int(_devtools("broker").cli(rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    settings = Settings.from_env()
    if args.command == "run":
        return int(_devtools("run").run(settings))
    from streams.wiring import add_api_key, run_worker

    if args.command == "keys":
        print(add_api_key(settings.api_keys_file, args.tenant))
        return 0
    return run_worker(settings)


def _devtools(name: str) -> ModuleType:
    """A module of the development tooling of a checkout (devtools/), which images do not ship."""
    try:
        return importlib.import_module(f"devtools.{name}")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "`clipguard run` and `clipguard broker` are development commands: run them from a "
            f"ClipGuard checkout (make run), not from a worker image ({exc})"
        ) from exc


if __name__ == "__main__":
    raise SystemExit(main())
