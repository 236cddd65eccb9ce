# One image for every service (dashboard, consumer, producer, the kill_thread scripts).
# docker-compose.yml picks the command per service; there is no ENTRYPOINT to hide it:
#   docker run --rm -e REDIS_URL=redis://host:6379/0 workqueue python consumer_main.py --workers 4
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# Run as an unprivileged user with a home (the settings read ~/.local/share for the embedded
# Redis, which is unused here: compose always sets REDIS_URL). The code stays root-owned, read-only.
RUN useradd --create-home --uid 10001 --user-group workqueue
USER workqueue
