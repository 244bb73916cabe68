# ClipGuard worker: pipeline agents + HTTP API (Faust web server). Models ship in models/.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY api api
COPY schemas schemas
COPY models models
# Editable, so the code finds schemas/ and models/ beside it in /app, as in a checkout.
RUN pip install --no-cache-dir -e .
# The worker runs as an unprivileged user that can write only its data; the code, the models and
# the key file (mounted read-only at /config, mode 0600, owned by uid 10001) stay root's.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin clipguard \
    && mkdir -p /data/worker /data/media /data/uploads /config \
    && chown -R clipguard:clipguard /data
USER clipguard
ENV CLIPGUARD_MODELS_DIR=/app/models \
    CLIPGUARD_DATA_DIR=/data/worker \
    CLIPGUARD_MEDIA_ROOTS=/data/media \
    CLIPGUARD_UPLOAD_DIR=/data/uploads \
    CLIPGUARD_API_KEYS_FILE=/config/api-keys.json \
    CLIPGUARD_INTERNAL_SECRET_FILE=/config/internal-secret \
    CLIPGUARD_WEB_BIND=0.0.0.0
EXPOSE 6066 6068
ENTRYPOINT ["clipguard"]
CMD ["worker"]
