#!/usr/bin/env bash
# Set up fedtorch on a fresh Debian machine; safe to run again (it skips what is done).
#   - Debian packages: Fashion-MNIST IDX files (dataset-fashion-mnist), python3-venv if needed
#   - a virtualenv in .venv with torch 2.13.0 and fedtorch (editable)
# A torch already present in .venv (e.g. a CUDA build you installed) is kept.
# torch comes from pip's configured index; FEDTORCH_TORCH_INDEX_URL overrides it, e.g.
#   FEDTORCH_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/setup.sh   # CPU wheel
# (on Linux, plain PyPI serves the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    echo "setup: installing Debian package dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    if ! $PY -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        $PY -m venv .venv
    fi
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if [ -n "${FEDTORCH_TORCH_INDEX_URL:-}" ]; then
        echo "setup: installing torch==2.13.0 from $FEDTORCH_TORCH_INDEX_URL (FEDTORCH_TORCH_INDEX_URL)"
        .venv/bin/pip install -q --index-url "$FEDTORCH_TORCH_INDEX_URL" torch==2.13.0
    else
        echo "setup: installing torch==2.13.0 from pip's configured index (on plain PyPI/Linux that is the CUDA build;" \
            "for the CPU build set FEDTORCH_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)"
        .venv/bin/pip install -q torch==2.13.0
    fi
fi
if ! .venv/bin/python -c "import fedtorch, omegaconf, yaml, rich, matplotlib, sklearn, pytest, tensorboard, datasets, mlflow, sqlalchemy, alembic, wandb, cryptography, Crypto, dp_accounting" 2>/dev/null \
    || [ pyproject.toml -nt .venv/.fedtorch-installed ]; then
    echo "setup: installing fedtorch and its dependencies into .venv"
    .venv/bin/pip install -q -e ".[dev,tensorboard,huggingface,mlflow,wandb,secagg,privacy]"
    touch .venv/.fedtorch-installed
fi
echo "setup: ready (.venv/bin/fedtorch)"
