"""The `clipguard` command: worker, broker, run (broker + worker for development), keys,
deadletter (list and replay dead letters), status (is it working: one screen)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from datetime import datetime
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
    keys = sub.add_parser("keys", help="API keys: add TENANT | list | revoke ID | migrate")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("add", help="create a key for TENANT (shown once)").add_argument(
        "tenant"
    )
    key_actions.add_parser("list", help="id, tenant and creation time of every key")
    key_actions.add_parser("revoke", help="remove the key with this id").add_argument("id")
    key_actions.add_parser("migrate", help="rewrite a version 1 file (plaintext) with digests")
    _add_deadletter(sub)
    sub.add_parser(
        "status", help="workers, lag, recent results, dead letters, the live model pack"
    ).add_argument("--json", action="store_true", help="the same as one JSON object")
    args, rest = parser.parse_known_args(argv)

    if args.command == "broker":  # development tooling, not part of a worker
        return int(_devtools("broker").cli(rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    settings = Settings.from_env()
    if args.command == "run":
        return int(_devtools("run").run(settings))
    if args.command == "keys":
        return _keys(args, settings)
    if args.command == "deadletter":
        return _deadletter(args, settings)
    if args.command == "status":
        return _status(args, settings)
    from streams.wiring import run_worker

    return run_worker(settings)


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    """`clipguard keys ...`: the key file is settings.api_keys_file (CLIPGUARD_API_KEYS_FILE)."""
    from streams import wiring

    path = settings.api_keys_file
    if args.action == "add":
        new = wiring.create_api_key(path, args.tenant)
        print(new.key)  # stdout: the key alone, so that KEY=$(clipguard keys add T) works
        print(
            f"API key {new.info.id} for tenant {new.info.tenant} added to {path}; it is shown "
            "only this once (the file keeps its digest)",
            file=sys.stderr,
        )
    elif args.action == "list":
        infos = wiring.list_api_keys(path)
        print("id\ttenant\tcreated_at")
        for info in infos:
            print(f"{info.id}\t{info.tenant}\t{info.created_at or '-'}")
    elif args.action == "revoke":
        info = wiring.revoke_api_key(path, args.id)
        print(
            f"revoked API key {info.id} of tenant {info.tenant}; workers refuse it within a second"
        )
    else:
        version = wiring.migrate_api_keys(path)
        done = "already stores digests only" if version == 2 else "now stores digests only"
        print(f"API key file {path} (version {version}) {done}")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    """`clipguard status [--json]` against CLIPGUARD_KAFKA_BOOTSTRAP (docs/operations.md)."""
    import dataclasses
    import json

    from streams import status

    report = asyncio.run(status.status(settings))
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        print(status.format_status(report))
    return 0


STAGES = ("intake", "decode", "classify", "results", "deliver", "deadline", "internal")


def _add_deadletter(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`clipguard deadletter list|replay [filters]` (docs/kafka.md, "Replaying dead letters")."""
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--stage", choices=STAGES, help="where it failed")
    filters.add_argument("--code", type=int, metavar="N", help="its error_code (docs/errors.md)")
    filters.add_argument(
        "--id", dest="ids", action="extend", nargs="+", metavar="ID", help="clip ids"
    )
    filters.add_argument(
        "--since", type=_iso_time, metavar="ISO", help="failed at or after (ISO 8601; UTC if naive)"
    )
    filters.add_argument("--until", type=_iso_time, metavar="ISO", help="failed before")
    filters.add_argument(
        "--limit", type=_positive, metavar="N", help="take the first N that match at most"
    )
    deadletter = sub.add_parser("deadletter", help="dead letters: list | replay [filters]")
    actions = deadletter.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[filters], help="the dead letters that match, one line each")
    replay = actions.add_parser(
        "replay",
        parents=[filters],
        help="put the matching dead letters' clip requests back where they were read",
    )
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    replay.add_argument(
        "--all", dest="everything", action="store_true", help="replay without a filter"
    )
    replay.set_defaults(refuse=replay.error)


def _deadletter(args: argparse.Namespace, settings: Settings) -> int:
    """`clipguard deadletter ...`: reads CLIPGUARD_TOPIC_PREFIX's dead-letter topic."""
    from streams import deadletters

    chosen = (args.stage, args.code, args.ids, args.since, args.until)
    filters = {
        "stage": args.stage,
        "code": args.code,
        "ids": args.ids,
        "since": args.since,
        "until": args.until,
        "limit": args.limit,
    }
    if args.action == "list":
        report = asyncio.run(deadletters.list_letters(settings, **filters))
        for line in deadletters.table(report.matched):
            print(line)
        print(f"{report.topic}: {len(report.matched)} dead letters", file=sys.stderr)
        return 0
    if chosen == (None,) * len(chosen) and not (args.everything or args.dry_run):
        args.refuse(
            "refusing to replay every dead letter: choose with --stage, --code, --id, --since "
            "or --until (try --dry-run first), or say --all"
        )
    report = asyncio.run(deadletters.replay(settings, **filters, dry_run=args.dry_run))
    for line in report.lines():
        print(line)
    return 0


def _iso_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (2026-01-31T08:00:00+01:00)"
        ) from None


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return number


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
