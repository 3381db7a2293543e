#!/usr/bin/env bash
# launch_spot.sh: one Spotlight spot node that joins a running coordinator and explores
# seeds until it is preempted. Start and kill as many as you like, at any time: a node's
# arrival or loss never stops or restarts the others or the trainer.
#
#   scripts/launch_spot.sh (--coordinator tcp://H:P | --ready-file F) [OPTIONS] [-- NODE ARGS]
#
# Options (each also settable by the environment variable in brackets):
#   --coordinator ADDR    the coordinator's runtime address, as `spotlight run` printed it
#                         ("start" event) [SPOTLIGHT_COORDINATOR]
#   --ready-file F        read the address from F, the file `spotlight run --ready-file F`
#                         writes once it serves; waits for it up to --wait seconds
#   --wait S              how long to wait for --ready-file [SPOTLIGHT_READY_WAIT, default 300]
#   --node-id ID          this node's id, unique in the run [SPOTLIGHT_NODE_ID, default
#                         HOSTNAME-PID; the PID is the node process's own (exec)]
#   --notice-grace S      SIGTERM is a preemption notice: the node drains (finishes or hands
#                         back its in-flight work) and leaves within S seconds
#                         [SPOTLIGHT_NOTICE_GRACE, default 25, under Kubernetes' default 30 s
#                         termination grace; AWS gives 120 s, GCP/Azure 30 s]
#   --gpus G              GPUs billed for this node [SPOTLIGHT_GPUS, default 1]
#   --sp-degree D         sequence-parallel degree of the node's explorer [SPOTLIGHT_SP_DEGREE,
#                         default 1: one process]; D > 1 runs G SP member processes (one
#                         per GPU) as an elastic group at degree D (D <= G, D divides the
#                         model's heads and image tokens); a lost member re-forms it smaller
#   --node-ready-file F   the node writes its own address to F once it has registered
#   --base DIR            this node's copy of the trainer's base checkpoint, for LoRA runs
#                         (trainer.lora_rank > 0 publishes adapters only, so each node loads
#                         the frozen base itself) [SPOTLIGHT_BASE, default: the trainer's
#                         path, which must then exist on this node]
#   --python PATH         interpreter with spotlight installed [SPOTLIGHT_PYTHON, default:
#                         the repository's .venv/bin/python if present, else python3]
#   -h, --help            this text
# Anything after `--` goes to `python -m spotlight.nodes.spot` (see its --help: e.g.
# --bind-host, --advertise-host, --threads, --pull-batch, --log-level).
#
# Signals (the script execs the node, so they reach it directly):
#   SIGTERM   a preemption notice (drain, report, leave cleanly before the grace ends)
#   SIGINT    a voluntary leave (not counted as a preemption)
#   SIGKILL   a silent loss: the coordinator notices the missing heartbeats and the
#             scheduler re-queues the node's leased work from its last committed step
#
# Networking: a coordinator beyond loopback needs the cluster token: export the same
# SPOTLIGHT_CLUSTER_TOKEN as the coordinator's, and give `-- --bind-host 0.0.0.0
# --advertise-host NAME` so the coordinator can reach this node back.
#
# Examples:
#   scripts/launch_spot.sh --coordinator tcp://127.0.0.1:41234
#   scripts/launch_spot.sh --ready-file /shared/coord.addr --notice-grace 100
#   SPOTLIGHT_CLUSTER_TOKEN=s3cret scripts/launch_spot.sh --coordinator tcp://od0:29600 \
#       -- --bind-host 0.0.0.0 --advertise-host "$(hostname)"
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

die() {
    echo "launch_spot.sh: $*" >&2
    exit 2
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
coordinator="${SPOTLIGHT_COORDINATOR:-}"
ready_file=""
wait_s="${SPOTLIGHT_READY_WAIT:-300}"
node_id="${SPOTLIGHT_NODE_ID:-}"
grace="${SPOTLIGHT_NOTICE_GRACE:-25}"
gpus="${SPOTLIGHT_GPUS:-1}"
sp_degree="${SPOTLIGHT_SP_DEGREE:-1}"
node_ready_file=""
base="${SPOTLIGHT_BASE:-}"
python="${SPOTLIGHT_PYTHON:-}"

need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --coordinator) need "$@"; coordinator="$2"; shift 2 ;;
        --ready-file) need "$@"; ready_file="$2"; shift 2 ;;
        --wait) need "$@"; wait_s="$2"; shift 2 ;;
        --node-id) need "$@"; node_id="$2"; shift 2 ;;
        --notice-grace) need "$@"; grace="$2"; shift 2 ;;
        --gpus) need "$@"; gpus="$2"; shift 2 ;;
        --sp-degree) need "$@"; sp_degree="$2"; shift 2 ;;
        --node-ready-file) need "$@"; node_ready_file="$2"; shift 2 ;;
        --base) need "$@"; base="$2"; shift 2 ;;
        --python) need "$@"; python="$2"; shift 2 ;;
        --) shift; break ;;
        *) die "unknown option '$1' (node options go after --; see --help)" ;;
    esac
done

number='^[0-9]+([.][0-9]+)?$'
[[ "$grace" =~ $number ]] || die "--notice-grace must be seconds >= 0, got '$grace'"
[[ "$wait_s" =~ $number ]] || die "--wait must be seconds >= 0, got '$wait_s'"
[[ "$gpus" =~ ^[0-9]+$ ]] || die "--gpus must be an integer >= 0, got '$gpus'"
[[ "$sp_degree" =~ ^[1-9][0-9]*$ ]] || die "--sp-degree must be an integer >= 1, got '$sp_degree'"
if ((sp_degree > 1 && sp_degree > gpus)); then
    die "--sp-degree $sp_degree needs as many GPUs (one SP member each); --gpus is $gpus"
fi
if [[ -n "$coordinator" && -n "$ready_file" ]]; then
    die "give --coordinator or --ready-file, not both"
fi
if [[ -n "$ready_file" ]]; then
    # The coordinator writes the file by a rename, so it is either absent or complete.
    deadline=$((SECONDS + ${wait_s%.*}))
    until [[ -s "$ready_file" ]]; do
        ((SECONDS < deadline)) || die "no coordinator address in $ready_file after ${wait_s} s"
        sleep 0.2
    done
    coordinator="$(head -n 1 "$ready_file")"
fi
[[ -n "$coordinator" ]] || die "no coordinator: give --coordinator tcp://H:P or --ready-file F"
[[ "$coordinator" =~ ^tcp://.+:[0-9]+$ ]] ||
    die "--coordinator must look like tcp://HOST:PORT, got '$coordinator'"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
command -v "$python" >/dev/null || die "no python at '$python' (set --python or SPOTLIGHT_PYTHON)"
# exec keeps this PID: the default id names the node process, and signals reach it.
[[ -n "$node_id" ]] || node_id="$(hostname -s 2>/dev/null || hostname)-$$"

node=("$python" -m spotlight.nodes.spot --coordinator "$coordinator" --node-id "$node_id"
    --notice-grace "$grace" --gpus "$gpus" --sp-degree "$sp_degree")
[[ -z "$node_ready_file" ]] || node+=(--ready-file "$node_ready_file")
if [[ -n "$base" ]]; then
    [[ -f "$base/card.json" ]] || die "--base $base is not a checkpoint directory (no card.json)"
    node+=(--base "$base")
fi
exec "${node[@]}" "$@"
