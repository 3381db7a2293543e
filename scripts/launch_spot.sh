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
#   --wait S              how long to wait for --ready-file, then for the coordinator's port
#                         to accept a connection [SPOTLIGHT_READY_WAIT, default 300]
#   --node-id ID          this node's id, unique in the run [SPOTLIGHT_NODE_ID, default
#                         HOSTNAME-PID; the PID is the node process's own (exec)]
#   --platform P          where the node runs: its notice sources and how much lead it plans
#                         with [SPOTLIGHT_PLATFORM, default generic]; SIGTERM is always a
#                         preemption notice (the node drains: finishes or hands back its
#                         in-flight work, and leaves before the lead is up):
#                           generic  SIGTERM, 12 s (fits the shortest below)
#                           gke      SIGTERM, 12 s (GKE kills spot pods 15 s after SIGTERM)
#                           k8s      SIGTERM, 25 s (Kubernetes' default 30 s grace period)
#                           eks      SIGTERM, 100 s (node termination handler / Karpenter
#                                    drain on EC2's 2-minute notice; pod grace 115 s)
#                           aws      EC2 metadata (IMDSv2) 120 s notice, SIGTERM 12 s
#                           gcp      GCE metadata 30 s notice, SIGTERM 25 s
#                           azure    Scheduled Events (>= 30 s), SIGTERM 25 s
#                         (table and sources: docs/deploy.md)
#   --notice-grace S      override the lead planned after a SIGTERM [SPOTLIGHT_NOTICE_GRACE]
#   --notice-lead S       override the lead of GCP's metadata notice, which carries no time
#                         [SPOTLIGHT_NOTICE_LEAD; AWS and Azure notices carry their own]
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
#   --dry-run             print the node's command instead of running it (no waiting)
#                         [SPOTLIGHT_DRY_RUN=1]
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
# SPOTLIGHT_CLUSTER_TOKEN as the coordinator's (the script refuses to start without it), and
# give `-- --bind-host 0.0.0.0 --advertise-host NAME` so the coordinator can reach this node
# back. Before starting the node the script waits (up to --wait) for the coordinator's port
# to accept a connection, and names what to check when it never does.
#
# Examples:
#   scripts/launch_spot.sh --coordinator tcp://127.0.0.1:41234
#   scripts/launch_spot.sh --ready-file /shared/coord.addr --platform aws
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
platform="${SPOTLIGHT_PLATFORM:-generic}"
grace="${SPOTLIGHT_NOTICE_GRACE:-}"
lead="${SPOTLIGHT_NOTICE_LEAD:-}"
dry_run="${SPOTLIGHT_DRY_RUN:-0}"
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
        --platform) need "$@"; platform="$2"; shift 2 ;;
        --notice-grace) need "$@"; grace="$2"; shift 2 ;;
        --notice-lead) need "$@"; lead="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
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
platforms="generic gke k8s eks aws gcp azure" # spotlight/runtime/notice/platforms.py
[[ " $platforms " == *" $platform "* ]] ||
    die "--platform must be one of: ${platforms// /, }; got '$platform'"
[[ -z "$grace" || "$grace" =~ $number ]] || die "--notice-grace must be seconds >= 0, got '$grace'"
[[ -z "$lead" || "$lead" =~ $number ]] || die "--notice-lead must be seconds >= 0, got '$lead'"
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
    --platform "$platform" --gpus "$gpus" --sp-degree "$sp_degree")
[[ -z "$grace" ]] || node+=(--notice-grace "$grace")
[[ -z "$lead" ]] || node+=(--notice-lead "$lead")
[[ -z "$node_ready_file" ]] || node+=(--ready-file "$node_ready_file")
if [[ -n "$base" ]]; then
    [[ -f "$base/card.json" || -f "$base/transformer/config.json" ]] ||
        die "--base $base is not a checkpoint directory (no card.json) nor a Qwen-Image" \
            "pipeline directory (no transformer/config.json)"
    node+=(--base "$base")
fi

# The coordinator's host and port, and whether joining it needs the cluster token.
hostport="${coordinator#tcp://}"
host="${hostport%:*}"
port="${hostport##*:}"
host="${host#[}"
host="${host%]}"
case "$host" in
    127.* | localhost | ::1) ;;
    *) [[ -n "${SPOTLIGHT_CLUSTER_TOKEN:-}" ]] ||
        die "the coordinator $coordinator is beyond loopback, which needs the cluster token:" \
            "export SPOTLIGHT_CLUSTER_TOKEN (the coordinator's; SkyPilot: --secret" \
            "SPOTLIGHT_CLUSTER_TOKEN, Kubernetes: the Secret spotlight-token, docs/deploy.md)" ;;
esac

if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "${node[@]}" "$@"
    echo
    exit 0
fi

# Wait for the coordinator's port, so a node started before it (a Kubernetes Deployment, a
# job group) waits instead of failing, and a wrong address fails with what to check.
deadline=$((SECONDS + ${wait_s%.*}))
said=0
until timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
        why="nothing accepts connections on port $port"
        getent hosts "$host" >/dev/null 2>&1 || why="the host name '$host' does not resolve"
        die "cannot reach the coordinator at $coordinator after ${wait_s} s ($why): check that" \
            "\`spotlight run\` is up and serving there (--listen 0.0.0.0:$port; its start event" \
            "prints its address), that the port is open between the machines (Kubernetes" \
            "Service, SkyPilot ports:) and the address (--coordinator / SPOTLIGHT_COORDINATOR)"
    fi
    if ((said == 0)); then
        echo "launch_spot.sh: waiting for the coordinator at $coordinator (up to ${wait_s} s)" >&2
        said=1
    fi
    sleep 1
done
exec "${node[@]}" "$@"
