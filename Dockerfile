# technic as an image: built from the wheel, run as a non-root user.
#   docker build -t technic .
#   docker run -p 8000:8000 technic                 # embedded PostgreSQL in /home/technic/data
#   docker compose up                               # with PostgreSQL (and Redis, for the fleet)
# .ci/wheel-check runs the same commands (install the wheel, migrate, scan, serve) in a fresh
# virtual environment, because CI has no Docker engine.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cli cli
COPY config config
COPY engine engine
COPY migrations migrations
COPY server server
COPY storage storage
RUN pip wheel --no-deps --wheel-dir /dist .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 technic
COPY --from=wheel /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/technic-*.whl && rm /tmp/technic-*.whl
USER technic
WORKDIR /home/technic
ENV HOST=0.0.0.0 \
    PORT=8000 \
    TECHNIC_DATA_DIR=/home/technic/data
# compiles the indicator kernels into numba's cache now, so the first scan does not wait ~15 s
RUN technic scan --max-symbols 5 --no-progress --no-cache > /dev/null
VOLUME ["/home/technic/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/health\", timeout=2)"]
CMD ["technic", "serve"]
