# ClipGuard worker: pipeline agents + HTTP API (Faust web server). Models ship in models/.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY api api
COPY schemas schemas
COPY models models
RUN pip install --no-cache-dir .
# Python code is installed; schemas/ and models/ are read from /app.
ENV CLIPGUARD_MODELS_DIR=/app/models \
    CLIPGUARD_DATA_DIR=/data/worker \
    CLIPGUARD_MEDIA_ROOTS=/data/media \
    CLIPGUARD_UPLOAD_DIR=/data/media/uploads \
    CLIPGUARD_API_KEYS_FILE=/config/api-keys.json \
    CLIPGUARD_WEB_BIND=0.0.0.0
EXPOSE 6066
ENTRYPOINT ["clipguard"]
CMD ["worker"]
