# The worker and the `dropzone` CLI (also used for the one-shot `dropzone migrate`).
FROM python:3.12.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md alembic.ini worker.py ./
COPY dropzone ./dropzone
COPY workflows ./workflows
COPY activities ./activities
COPY starter ./starter
COPY migrations ./migrations
RUN pip install . \
    && useradd --system --no-create-home --shell /usr/sbin/nologin dropzone

USER dropzone
# worker.py stops polling on SIGTERM and drains in-flight activities (compose: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["dropzone-worker"]
