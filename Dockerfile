# syntax=docker/dockerfile:1
# icsscan container images. Two targets, both installed from this repository's pyproject.toml:
#
#   docker build -t icsscan .                           # CPU (default, last stage): python:3.11-slim + .[cpu]
#   docker build --target gpu -t icsscan:gpu .          # NVIDIA GPU: CUDA runtime base + .[gpu]
#
#   docker run --rm -v "$PWD:/data" icsscan scan /data/incoming --model /data/model.onnx --out /data/report
#
# See docs/docker.md. Each target installs exactly one onnxruntime build (cpu = onnxruntime,
# gpu = onnxruntime-gpu): both provide the same module and must never be installed together.

ARG PYTHON_IMAGE=python:3.11-slim
# onnxruntime-gpu and torch 2.14.1 from the default index are built for CUDA 13 + cuDNN 9; the base image's
# CUDA major version must match theirs (override with --build-arg CUDA_IMAGE=... when they move on).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# CPU-only torch/torchvision wheels (about 200 MB instead of several GB of CUDA libraries). Used by the
# cpu target only, as an *extra* index: pip takes the highest matching version, and 2.14.1+cpu satisfies
# pyproject's torch==2.14.1 pin while ranking above the plain 2.14.1 (CUDA) wheel. Every other package
# still comes from the default index.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# ------------------------------------------------------------------------------------------ gpu build
FROM ${CUDA_IMAGE} AS gpu-build
# DL3008: python3 is the distribution's own, fixed by the pinned base tag; pinning its exact apt version
# would break the build whenever Ubuntu's archive rotates it out.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.m[d] ./
COPY icsscan ./icsscan
# torch from the default index here: the CUDA build, so `icsscan train --device cuda` uses the GPU too.
# DL3013: this installs the local project; its versions are pinned in pyproject.toml, not repeated here.
# hadolint ignore=DL3013
RUN pip install '.[gpu]' \
 && python -c "import onnxruntime, icsscan.cli" \
 && ! pip show onnxruntime >/dev/null 2>&1

# ------------------------------------------------------------------------------------------ gpu runtime
FROM ${CUDA_IMAGE} AS gpu
# Python only: no build tools, no X11/GUI libraries (matplotlib renders with Agg). DL3008: as above.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 icsscan \
 && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin icsscan
COPY --from=gpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH MPLBACKEND=Agg MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Numeric, so Kubernetes' runAsNonRoot can verify it; override with --user "$(id -u):$(id -g)" (docs/docker.md).
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["icsscan"]
CMD ["--help"]

# ------------------------------------------------------------------------------------------ cpu build
FROM ${PYTHON_IMAGE} AS cpu-build
ARG TORCH_CPU_INDEX
# SMOKE_BUILD=1: an offline smoke build (tools/docker_smoke.sh, docs/docker.md) for machines that cannot reach the
# CPU torch index. torch then comes from whatever pip is configured with (e.g. local wheels through a mounted
# pip.conf), which on PyPI or a local mirror is the CUDA build, and the CPU-only check below is skipped: the
# image works on a CPU but is several GB. Never use it for images you ship.
ARG SMOKE_BUILD=0
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.m[d] ./
COPY icsscan ./icsscan
# The check after the install fails the build if a CUDA torch or onnxruntime-gpu slipped in.
# DL3013: this installs the local project; its versions are pinned in pyproject.toml, not repeated here.
# hadolint ignore=DL3013
RUN if [ "${SMOKE_BUILD}" = 1 ]; then pip install '.[cpu]'; \
    else pip install --extra-index-url "${TORCH_CPU_INDEX}" '.[cpu]'; fi \
 && python -c "import os, torch, onnxruntime, icsscan.cli; \
assert torch.version.cuda is None or os.environ.get('SMOKE_BUILD') == '1', 'CUDA torch in the CPU image: ' + torch.__version__" \
 && ! pip show onnxruntime-gpu >/dev/null 2>&1

# ------------------------------------------------------------------------------------------ cpu runtime
FROM ${PYTHON_IMAGE} AS cpu
ARG SMOKE_BUILD=0
LABEL org.icsscan.smoke-build="${SMOKE_BUILD}"
# Nothing from apt: the wheels carry their own libraries, and no GUI libraries are needed (Agg backend).
RUN groupadd --gid 10001 icsscan \
 && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin icsscan
COPY --from=cpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH MPLBACKEND=Agg MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Numeric, so Kubernetes' runAsNonRoot can verify it; override with --user "$(id -u):$(id -g)" (docs/docker.md).
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["icsscan"]
CMD ["--help"]
