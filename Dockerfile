# chameleon-serve on an NVIDIA GPU.
#
#   docker build -t chameleon-serve .
#   docker run --gpus all -p 8000:8000 -v /path/to/ckpt:/models/ckpt chameleon-serve --model /models/ckpt
#
# Arguments after the image name go to `chameleon-serve serve` (see `--help`); with no --model the demo
# model bundled in the package is served. SIGTERM drains for --shutdown-grace seconds (default 30), so
# stop with `docker stop -t 40` to let running requests finish.
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip

WORKDIR /app
# Only what the package needs (no .venv, tests or training runs from the build context).
COPY pyproject.toml README.md ./
COPY chameleon_serve ./chameleon_serve
# The server stack; PyPI's Linux torch wheels ship CUDA (attention runs on SDPA's flash kernels there).
RUN pip install ".[server]"

RUN useradd --create-home --uid 1000 serve
USER serve

EXPOSE 8000
# /health answers as soon as the socket is up (no auth); /ready turns 200 once the model is loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"

ENTRYPOINT ["chameleon-serve", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
