# One image for the API, the workers and the scheduler (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/* && pip install --no-cache-dir uv==0.9.* \
    && useradd --system --create-home --uid 10001 facelib
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY api api
COPY worker worker
COPY shared shared
COPY sql sql
# Only what the server needs: no dev tools, no embedded Postgres/Redis (compose runs real ones).
RUN uv sync --frozen --no-default-groups --extra s3 --no-editable
# The services run unprivileged; FACELIB_HOME (ONNX model cache, files) is theirs.
ENV FACELIB_HOME=/var/lib/facelib
RUN mkdir -p /var/lib/facelib && chown facelib /var/lib/facelib
USER facelib
EXPOSE 7007
# gunicorn's settings are shared/cli/gunicorn_conf.py (the same as `facelib up`'s); only the
# address and the number of workers are the image's own
CMD ["gunicorn", "--config", "python:shared.cli.gunicorn_conf", "--workers", "4", "--bind", "0.0.0.0:7007"]
