#!/usr/bin/env bash
# The setup: of every task in deploy/skypilot/ (runs once per cluster, in the workdir).
#
#   deploy/skypilot/setup.sh ondemand|spot
#
# 1. .venv with spotlight: torch as PyPI ships it for Linux (a CUDA build), then the package
#    with the OCR reward and LoRA extras.
# 2. SPOTLIGHT_NFS (on-demand, optional): an NFS export (EFS, Filestore, Azure Files NFS, your
#    own) mounted at SPOTLIGHT_NFS_MOUNT [/mnt/spotlight], where SPOTLIGHT_RUN_DIR should be.
#    A run directory needs rename and append (atomic checkpoints, ready files, JSON lines),
#    which bucket mounts do not give: see docs/deploy.md. Without one the run directory is on
#    this cluster's disk and a recovered (new) cluster starts the run again. Either way
#    SPOTLIGHT_RUN_DIR is created and handed to the task's user.
# 3. SPOTLIGHT_BASE + SPOTLIGHT_BASE_REPO (optional): download the base model (e.g.
#    Qwen/Qwen-Image into /models/Qwen-Image) unless it is there; every node needs its copy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
role="${1:-}"
[[ "$role" == ondemand || "$role" == spot ]] || {
    echo "deploy/skypilot/setup.sh: usage: setup.sh ondemand|spot" >&2
    exit 2
}

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch
.venv/bin/pip install -q -e '.[ocr,lora]'

if [[ "$role" == ondemand && -n "${SPOTLIGHT_NFS:-}" ]]; then
    mount_point="${SPOTLIGHT_NFS_MOUNT:-/mnt/spotlight}"
    sudo mkdir -p "$mount_point"
    mountpoint -q "$mount_point" ||
        sudo mount -t nfs -o nfsvers=4.1,hard,timeo=600 "$SPOTLIGHT_NFS" "$mount_point"
    sudo chown "$(id -u):$(id -g)" "$mount_point"
fi
if [[ "$role" == ondemand && -n "${SPOTLIGHT_RUN_DIR:-}" ]]; then
    # the run directory (e.g. under /mnt, which the task's user cannot write) is ours to fill
    sudo mkdir -p "$SPOTLIGHT_RUN_DIR" && sudo chown "$(id -u):$(id -g)" "$SPOTLIGHT_RUN_DIR"
fi

if [[ -n "${SPOTLIGHT_BASE:-}" && ! -e "${SPOTLIGHT_BASE}/model_index.json" ]]; then
    : "${SPOTLIGHT_BASE_REPO:?SPOTLIGHT_BASE is missing and SPOTLIGHT_BASE_REPO is unset}"
    sudo mkdir -p "$SPOTLIGHT_BASE" && sudo chown "$(id -u):$(id -g)" "$SPOTLIGHT_BASE"
    .venv/bin/hf download "$SPOTLIGHT_BASE_REPO" --local-dir "$SPOTLIGHT_BASE"
fi
