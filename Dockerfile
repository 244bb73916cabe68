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
ENV CLIPGUARD_MODELS_DIR=/app/models \
    CLIPGUARD_DATA_DIR=/data/worker \
    CLIPGUARD_MEDIA_ROOTS=/data/media \
    CLIPGUARD_UPLOAD_DIR=/data/media/uploads \
    CLIPGUARD_API_KEYS_FILE=/config/api-keys.json \
    CLIPGUARD_WEB_BIND=0.0.0.0
EXPOSE 6066
ENTRYPOINT ["clipguard"]
CMD ["worker"]
