#!/usr/bin/env bash
# launch_ondemand.sh: the on-demand side of a Spotlight cluster (coordinator + trainer)
# under torchrun. Run it once on every on-demand node.
#
#   scripts/launch_ondemand.sh [LAUNCHER OPTIONS] [--] [spotlight run OPTIONS...]
#
# torchrun starts --nproc-per-node processes per node, each running `spotlight run` with
# the options after the launcher's own (the first one it does not know, or after `--`).
# Global rank 0 is the coordinator: it serves the runtime (--listen), the planner, the
# explore scheduler, the monitor, and leads the trainer; ranks > 0 are data-parallel
# trainer followers (no runtime). Spot nodes join rank 0's address with
# scripts/launch_spot.sh; a spot node's loss never restarts anything here.
#
# Launcher options (each also settable by the environment variable in brackets):
#   --nnodes N            on-demand nodes [SPOTLIGHT_NNODES, default 1]
#   --nproc-per-node P    processes per node: an integer, or gpu (one per GPU)
#                         [SPOTLIGHT_NPROC_PER_NODE, default 1]
#   --node-rank R         this node's rank with a static rendezvous
#                         [SPOTLIGHT_NODE_RANK, default 0]
#   --rdzv-endpoint H:P   rendezvous (c10d store) of a multi-node job, on the first node;
#                         required when --nnodes > 1 [SPOTLIGHT_RDZV_ENDPOINT]. With one
#                         node, torchrun --standalone picks a free local port.
#   --rdzv-id ID          job id, the same on every node [SPOTLIGHT_RDZV_ID, default spotlight]
#   --shutdown-timeout S  seconds torchrun waits for workers to stop after a signal before
#                         SIGKILL; a graceful stop finishes the iteration and checkpoints
#                         [SPOTLIGHT_SHUTDOWN_TIMEOUT, default 300]
#   --python PATH         interpreter with spotlight installed [SPOTLIGHT_PYTHON, default:
#                         the repository's .venv/bin/python if present, else python3]
#   --dry-run             print the torchrun command instead of running it [SPOTLIGHT_DRY_RUN=1]
#   -h, --help            this text
#
# Give `spotlight run` a --run-dir (on a shared file system with several nodes): every rank
# resolves the options itself, and an automatic run-<date-time> name can differ between
# ranks. The bill counts spot.ondemand_gpus on-demand GPUs, by default the trainer's world
# size (torchrun's WORLD_SIZE = nnodes x nproc-per-node, one GPU per rank). Set it only when
# GPUs and ranks differ, e.g. `--set spot.ondemand_gpus=8` for one process on an 8-GPU node.
#
# Backend: NCCL when CUDA is available (rank r uses cuda:LOCAL_RANK), gloo otherwise (CPU).
# The runtime itself is ZeroMQ over TCP either way.
#
# Networking: by default the coordinator binds 127.0.0.1 (a single machine). For spot nodes
# on other machines pass `--listen 0.0.0.0:PORT` (and --advertise-host NAME if the host name
# is not what others should dial) and export the same secret in SPOTLIGHT_CLUSTER_TOKEN here
# and on every spot node: the runtime refuses to bind beyond loopback without it (and this
# script refuses to start torchrun with such a --listen and no token). Pass
# `--ready-file F` to have rank 0 write its address to F once it serves (launch_spot.sh
# --ready-file F reads it on a shared file system).
#
# Environment knobs worth knowing (exported as usual, torchrun passes them on):
#   NCCL_DEBUG=INFO|WARN          NCCL logging (start here when a collective hangs)
#   NCCL_SOCKET_IFNAME=eth0       the interface NCCL bootstraps and talks over
#   NCCL_IB_DISABLE=1             no InfiniBand (e.g. cloud VMs without it)
#   NCCL_P2P_DISABLE=1            no GPU peer-to-peer (broken PCIe topologies)
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=1   abort on a collective timeout instead of hanging
#   TORCH_NCCL_BLOCKING_WAIT=1    collectives raise on timeout in the calling thread
#   GLOO_SOCKET_IFNAME=eth0       the interface gloo uses (CPU)
#   CUDA_VISIBLE_DEVICES=0,1      which GPUs this node uses
#   OMP_NUM_THREADS=N             CPU threads per process (torchrun sets 1 with nproc > 1)
#
# Examples:
#   scripts/launch_ondemand.sh -- --no-spot --iterations 4 --run-dir runs/dp  # 1 process
#   scripts/launch_ondemand.sh --nproc-per-node 2 -- --no-spot --run-dir runs/dp2
#   SPOTLIGHT_CLUSTER_TOKEN=s3cret scripts/launch_ondemand.sh --nproc-per-node gpu -- \
#       --spot-pool external --listen 0.0.0.0:29600 --ready-file /shared/coord.addr \
#       --run-dir /shared/runs/a
#   # two on-demand nodes, on each (R = 0 on the first, 1 on the second):
#   scripts/launch_ondemand.sh --nnodes 2 --node-rank R --nproc-per-node gpu \
#       --rdzv-endpoint node0:29500 -- --spot-pool external --listen 0.0.0.0:29600 ...
#
# Stopping: SIGINT/SIGTERM (Ctrl-C) to this script reach torchrun (it execs; its workers run
# in sessions of their own, so only torchrun sees the terminal's signal), which forwards
# them once to every worker: rank 0 stops after the iteration with a checkpoint and writes
# its report, the other ranks stop with it; a second Ctrl-C stops at once. Signal every
# node's launch (a scheduler does): a node's ranks only stop when rank 0 does.
# `spotlight run --stop-file F` stops the same way once F exists.
#
# Exit status (torchrun runs in spotlight.nodes.torchrun, which decides it from an
# exit record each of this node's workers writes as its `spotlight run` returns):
#   0        the run ended, or it stopped cleanly after a signal: every worker of this
#            node finished its stop and exited 0
#   1        torchrun failed without a signal: a worker failed (its ChildFailedError
#            names the rank and the error), or the rendezvous did
#   128+sig  a signal (130 SIGINT, 143 SIGTERM) and a worker did not stop cleanly: it
#            crashed, exited non-zero (e.g. after a second Ctrl-C), or was SIGKILLed past
#            --shutdown-timeout; the line before says which local rank
#   2        a bad launcher option
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

die() {
    echo "launch_ondemand.sh: $*" >&2
    exit 2
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nnodes="${SPOTLIGHT_NNODES:-1}"
nproc="${SPOTLIGHT_NPROC_PER_NODE:-1}"
node_rank="${SPOTLIGHT_NODE_RANK:-0}"
rdzv_endpoint="${SPOTLIGHT_RDZV_ENDPOINT:-}"
rdzv_id="${SPOTLIGHT_RDZV_ID:-spotlight}"
shutdown_timeout="${SPOTLIGHT_SHUTDOWN_TIMEOUT:-300}"
python="${SPOTLIGHT_PYTHON:-}"
dry_run="${SPOTLIGHT_DRY_RUN:-0}"

need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --nnodes) need "$@"; nnodes="$2"; shift 2 ;;
        --nproc-per-node) need "$@"; nproc="$2"; shift 2 ;;
        --node-rank) need "$@"; node_rank="$2"; shift 2 ;;
        --rdzv-endpoint) need "$@"; rdzv_endpoint="$2"; shift 2 ;;
        --rdzv-id) need "$@"; rdzv_id="$2"; shift 2 ;;
        --shutdown-timeout) need "$@"; shutdown_timeout="$2"; shift 2 ;;
        --python) need "$@"; python="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --) shift; break ;;
        *) break ;; # the first unknown option starts `spotlight run`'s options
    esac
done

[[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || die "--nnodes must be an integer >= 1, got '$nnodes'"
[[ "$nproc" =~ ^([1-9][0-9]*|gpu)$ ]] ||
    die "--nproc-per-node must be an integer >= 1 or 'gpu', got '$nproc'"
[[ "$node_rank" =~ ^[0-9]+$ && "$node_rank" -lt "$nnodes" ]] ||
    die "--node-rank must be in 0..$((nnodes - 1)), got '$node_rank'"
[[ "$shutdown_timeout" =~ ^[0-9]+$ ]] ||
    die "--shutdown-timeout must be whole seconds, got '$shutdown_timeout'"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
command -v "$python" >/dev/null || die "no python at '$python' (set --python or SPOTLIGHT_PYTHON)"

# torchrun itself, with the exit status below (spotlight/nodes/torchrun.py)
launcher=("$python" -m spotlight.nodes.torchrun --nnodes "$nnodes"
    --nproc-per-node "$nproc" --shutdown-timeout "$shutdown_timeout" --max-restarts 0)
if [[ "$nnodes" -eq 1 && -z "$rdzv_endpoint" ]]; then
    launcher+=(--standalone)
else
    [[ -n "$rdzv_endpoint" ]] ||
        die "--nnodes $nnodes needs --rdzv-endpoint HOST:PORT (the first node's address)"
    launcher+=(--node-rank "$node_rank" --rdzv-backend c10d --rdzv-endpoint "$rdzv_endpoint"
        --rdzv-id "$rdzv_id")
fi
launcher+=(-m spotlight.cli run "$@")

# `spotlight run --listen HOST:PORT` beyond loopback needs the token: say so once, here,
# rather than once per torchrun worker.
listen=""
for ((i = 1; i <= $#; i++)); do
    arg="${!i}"
    case "$arg" in
        --listen=*) listen="${arg#--listen=}" ;;
        --listen) j=$((i + 1)); listen="${!j:-}" ;;
    esac
done
if [[ -n "$listen" && -z "${SPOTLIGHT_CLUSTER_TOKEN:-}" ]]; then
    listen_host="${listen%:*}"
    listen_host="${listen_host#[}"
    case "${listen_host%]}" in
        127.* | localhost | ::1) ;;
        *) die "--listen $listen serves beyond loopback, which needs the cluster token: export" \
            "SPOTLIGHT_CLUSTER_TOKEN (a shared secret, e.g. \$(openssl rand -hex 32); the same" \
            "on every spot node; SkyPilot: --secret SPOTLIGHT_CLUSTER_TOKEN, Kubernetes: the" \
            "Secret spotlight-token, docs/deploy.md)" ;;
    esac
fi

if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "${launcher[@]}"
    echo
    exit 0
fi
exec "${launcher[@]}"
