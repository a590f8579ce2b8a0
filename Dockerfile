FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini worker.py ./
COPY dropzone ./dropzone
COPY workflows ./workflows
COPY activities ./activities
COPY starter ./starter
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system dropzone
USER dropzone
CMD ["dropzone-worker"]
