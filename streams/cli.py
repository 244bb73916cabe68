"""The `clipguard` command: worker, broker, run (broker + worker for development), keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from streams.errors import ClipGuardError
from streams.settings import PROJECT_ROOT, Settings

DEV_TENANT = "dev"


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

    if args.command == "broker":
        from streams.broker import cli

        return cli(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    settings = Settings.from_env()
    if args.command == "keys":
        from api.auth import add_key

        print(add_key(settings.api_keys_file, args.tenant))
        return 0
    if args.command == "run":
        return _run(settings)
    return _worker(settings)


def _worker(settings: Settings) -> int:
    import faust

    from streams.app import create_app
    from streams.topics import ensure_topics

    logging.basicConfig(level=logging.INFO)
    app = create_app(settings)  # configuration mistakes surface here, before Kafka is touched
    asyncio.run(ensure_topics(settings))
    worker = faust.Worker(app, loglevel="INFO")
    worker.execute_from_commandline()
    return 0


def _run(settings: Settings) -> int:
    from api.auth import add_key
    from streams.broker import Broker

    host, _, port = settings.kafka_bootstrap.rpartition(":")
    if host in ("127.0.0.1", "localhost", ""):
        broker = Broker(PROJECT_ROOT / ".clipguard" / "kafka", port=int(port))
        print(
            f"Kafka broker: {broker.start()} (data in {broker.data_dir}; "
            "stop: clipguard broker stop)"
        )
    else:  # an existing cluster: nothing to start
        print(f"Kafka: using {settings.kafka_bootstrap} (CLIPGUARD_KAFKA_BOOTSTRAP)")
    for path in (settings.upload_dir, *settings.media_roots):
        path.mkdir(parents=True, exist_ok=True)
    key_note = ""
    if not settings.api_keys_file.exists():
        key = add_key(settings.api_keys_file, DEV_TENANT)
        key_note = f"Created a development API key for tenant '{DEV_TENANT}': {key}\n"
    else:
        key = "<a key from " + str(settings.api_keys_file) + ">"
    base = f"http://{settings.web_host}:{settings.web_port}"
    clip = PROJECT_ROOT / "tests" / "fixtures" / "clips" / "people_h264.mp4"
    print(
        f"{key_note}API: {base}  (keys in {settings.api_keys_file})\n"
        f"Try:\n  curl -s -H 'Authorization: Bearer {key}' -F video=@{clip} "
        f"'{base}/api/classify?sync=true'\n",
        flush=True,
    )
    return _worker(settings)


if __name__ == "__main__":
    raise SystemExit(main())
