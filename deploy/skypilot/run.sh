#!/usr/bin/env bash
# The run: of every task in deploy/skypilot/: one Spotlight role on a SkyPilot node.
#
#   deploy/skypilot/run.sh ondemand    # coordinator + data-parallel trainer (torchrun)
#   deploy/skypilot/run.sh spot        # one spot node that joins the coordinator
#
# SkyPilot re-runs the same run: after every recovery, so the on-demand side always passes
# `--resume auto`: it continues the run in SPOTLIGHT_RUN_DIR from its checkpoint, or starts it.
#
# From SkyPilot: SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS (node 0 first), SKYPILOT_NUM_NODES,
# SKYPILOT_NUM_GPUS_PER_NODE, SKYPILOT_CLUSTER_INFO (JSON: the cloud), SKYPILOT_JOBGROUP_NAME
# (in a job group: tasks reach each other as TASK-0.GROUP). From the task's envs:
#   SPOTLIGHT_CLUSTER_TOKEN   required (secrets:): the shared secret of every task of a run
#   SPOTLIGHT_CONFIG          config file or preset of `spotlight run` (on-demand)
#   SPOTLIGHT_RUN_DIR         the run directory, on a POSIX shared file system (on-demand)
#   SPOTLIGHT_PORT            the coordinator's runtime port [29600]
#   SPOTLIGHT_RDZV_PORT       torchrun's rendezvous port with several on-demand nodes [29500]
#   SPOTLIGHT_COORDINATOR     tcp://HOST:PORT of the coordinator (spot; in a job group the
#                             default is tcp://ondemand-0.$SKYPILOT_JOBGROUP_NAME:$SPOTLIGHT_PORT)
#   SPOTLIGHT_BASE            the base model's directory on this node (setup.sh downloads it):
#                             --set trainer.base on the on-demand side, --base on spot nodes
#   SPOTLIGHT_PLATFORM        notice platform of a spot node [from the cloud: aws, gcp, azure;
#                             gke on Kubernetes, whose 15 s is the shortest; generic otherwise]
#   SPOTLIGHT_DRY_RUN=1       print the launcher's command instead of running it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

die() {
    echo "deploy/skypilot/run.sh: $*" >&2
    exit 2
}

role="${1:-}"
[[ "$role" == ondemand || "$role" == spot ]] || die "usage: run.sh ondemand|spot, got '$role'"
[[ -n "${SPOTLIGHT_CLUSTER_TOKEN:-}" ]] ||
    die "no cluster token: launch with --secret SPOTLIGHT_CLUSTER_TOKEN=\$(openssl rand -hex 32)," \
        "the same value for every task of the run (sky jobs launch ... --secret ...)"
: "${SKYPILOT_NODE_IPS:?not under SkyPilot: SKYPILOT_NODE_IPS is unset}"
self_ip="$(printf '%s\n' "$SKYPILOT_NODE_IPS" | head -n 1)" # node 0's IP on every node
port="${SPOTLIGHT_PORT:-29600}"
group="${SKYPILOT_JOBGROUP_NAME:-}"

if [[ "$role" == ondemand ]]; then
    : "${SPOTLIGHT_RUN_DIR:?set SPOTLIGHT_RUN_DIR (envs:), on a POSIX shared file system}"
    : "${SPOTLIGHT_CONFIG:?set SPOTLIGHT_CONFIG (envs:), a config file or a preset name}"
    advertise="$self_ip"
    [[ -z "$group" ]] || advertise="ondemand-0.$group"
    base=()
    [[ -z "${SPOTLIGHT_BASE:-}" ]] || base=(--set "trainer.base=$SPOTLIGHT_BASE")
    launcher=(--nproc-per-node gpu)
    if ((${SKYPILOT_NUM_NODES:-1} > 1)); then
        launcher+=(--nnodes "$SKYPILOT_NUM_NODES" --node-rank "$SKYPILOT_NODE_RANK"
            --rdzv-endpoint "$self_ip:${SPOTLIGHT_RDZV_PORT:-29500}")
    fi
    exec scripts/launch_ondemand.sh "${launcher[@]}" -- \
        --config "$SPOTLIGHT_CONFIG" --run-dir "$SPOTLIGHT_RUN_DIR" --resume auto \
        --spot-pool external --listen "0.0.0.0:$port" --advertise-host "$advertise" --json \
        "${base[@]}"
fi

coordinator="${SPOTLIGHT_COORDINATOR:-}"
[[ -n "$coordinator" || -z "$group" ]] || coordinator="tcp://ondemand-0.$group:$port"
[[ -n "$coordinator" ]] ||
    die "no coordinator: --env SPOTLIGHT_COORDINATOR=tcp://IP:$port, IP = the on-demand head's" \
        "(sky status --ip CLUSTER), in the same network as this node"
platform="${SPOTLIGHT_PLATFORM:-}"
if [[ -z "$platform" ]]; then
    case "${SKYPILOT_CLUSTER_INFO:-}" in
        *'"cloud": "AWS"'*) platform=aws ;;
        *'"cloud": "GCP"'*) platform=gcp ;;
        *'"cloud": "Azure"'*) platform=azure ;;
        *'"cloud": "Kubernetes"'*) platform=gke ;;
        *) platform=generic ;;
    esac
fi
exec scripts/launch_spot.sh --coordinator "$coordinator" --platform "$platform" \
    --gpus "${SKYPILOT_NUM_GPUS_PER_NODE:-1}" \
    -- --bind-host 0.0.0.0 --advertise-host "$self_ip"
