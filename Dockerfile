FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# /workers/ reports this (no .git in the image): docker build --build-arg SLUICE_VERSION=$(git describe --always)
ARG SLUICE_VERSION=""
ENV SLUICE_VERSION=$SLUICE_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml ./
COPY config ./config
COPY pipelines ./pipelines
COPY ingestion ./ingestion
COPY backoffice ./backoffice
COPY workers ./workers
COPY manage.py ./
# collectstatic loads the settings, which need a key; this one exists only during the build.
RUN pip install --no-cache-dir . && DJANGO_SECRET_KEY=build-only python manage.py collectstatic --no-input -v 0
RUN useradd --create-home sluice && mkdir -p /app/.var/media && chown -R sluice /app/.var
USER sluice
EXPOSE 8000
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--ws-per-message-deflate", "false"]
