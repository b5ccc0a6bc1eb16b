"""The faceLib HTTP API (Flask app factory). It validates, persists and enqueues; it never
imports dlib or the worker code."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, g

from shared.logs import configure_logging
from shared.settings import get_settings


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    settings = get_settings()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    if test_config:
        app.config.update(test_config)

    app.config.update(
        RATELIMIT_STORAGE_URI=settings.redis_url,
        RATELIMIT_KEY_PREFIX="facelib-rl",
        # fail closed: a Redis error while counting answers 9001, it never lifts the limits
        RATELIMIT_SWALLOW_ERRORS=False,
    )

    from api import (
        audit,
        envelope,
        faces,
        files,
        health,
        libraries,
        metrics,
        openapi,
        persons,
        tasks,
        tokens,
    )
    from api.extensions import limiter

    @app.before_request
    def _started() -> None:  # first of all hooks: one clock for the audit row and the metrics
        g.request_started = time.monotonic()

    envelope.init_app(app)
    files.init_app(app)
    limiter.init_app(app)
    audit.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(faces.bp)
    app.register_blueprint(persons.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(tokens.bp)
    app.register_blueprint(libraries.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    return app
