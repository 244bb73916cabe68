"""The one module that knows both sides: it wires the pipeline and the HTTP API into a worker.

Nothing else under `streams/` (the Faust app, steps and stages) imports `api/` (the aiohttp
views), and `api/` uses only the Kafka-free parts of `streams/` (records, results, settings,
errors, the upload store), never the Faust app or a Kafka client; here the pipeline's `WorkerService` is handed to the views, which are installed on the
Faust app's own web server, and the `clipguard` command (streams/cli.py) starts the result.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import faust

from api import auth
from api.views import install
from streams.admin import ensure_topics
from streams.app import create_app, runtime_of
from streams.logs import configure_logging
from streams.metrics import serve
from streams.service import WorkerService
from streams.settings import Settings
from streams.tracing import tracing_from_env


def create_worker(settings: Settings) -> faust.App:
    """The pipeline with the HTTP API on its web server; configuration mistakes raise here."""
    app = create_app(settings)
    web_app = cast(Any, app.web).web_app  # the aiohttp Application inside Faust's web driver
    runtime = runtime_of(app)
    install(web_app, WorkerService(runtime), settings, metrics=runtime.metrics)
    return app


def run_worker(settings: Settings) -> int:
    configure_logging(settings)  # streams/logs.py: levels, text or JSON, secrets scrubbed
    app = create_worker(settings)  # configuration mistakes surface here, before Kafka is touched
    # OpenTelemetry traces (docs/tracing.md): only when the standard OTEL_* variables ask.
    runtime_of(app).tracing = tracing_from_env()
    # GET /metrics on a port of its own (docs/metrics.md): no key there, so not the API's port.
    bind = settings.metrics_bind or settings.web_bind or settings.web_host
    serve(runtime_of(app).metrics.registry, settings.metrics_port, bind)
    asyncio.run(ensure_topics(settings))
    # Faust would replace the logging set up above with its own (INFO everywhere, no scrubber).
    worker = faust.Worker(app, loglevel="INFO", override_logging=False)
    worker.spinner = None  # no progress spinner between the log lines on a terminal
    worker.execute_from_commandline()
    return 0


def add_api_key(keys_file: Path, tenant: str) -> str:
    """A new API key for `tenant` (`clipguard run`); the file keeps only its digest."""
    return auth.add_key(keys_file, tenant)


# `clipguard keys add|list|revoke|migrate` (streams/cli.py): the key file is api/auth.py's.


def create_api_key(keys_file: Path, tenant: str) -> auth.NewKey:
    return auth.create_key(keys_file, tenant)


def list_api_keys(keys_file: Path) -> list[auth.KeyInfo]:
    return auth.list_keys(keys_file)


def revoke_api_key(keys_file: Path, key_id: str) -> auth.KeyInfo:
    return auth.revoke_key(keys_file, key_id)


def migrate_api_keys(keys_file: Path) -> int:
    return auth.migrate_keys(keys_file)
