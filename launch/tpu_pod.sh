#!/usr/bin/env bash
# Runs one gigatok_jax command on every worker of a Cloud TPU VM slice (multi-host). Each host runs
# the same command; JAX finds the other hosts itself (gigatok_jax/distributed.py), so no
# coordinator flags are needed. The workdir must be storage all hosts share (e.g. a gs:// bucket).
#
#   bash launch/tpu_pod.sh setup TPU_NAME ZONE                 # clone + install on every worker
#   bash launch/tpu_pod.sh run TPU_NAME ZONE RECIPE WORKDIR [--config.key=value ...]
#   bash launch/tpu_pod.sh run my-v5p-64 us-east5-a configs/tokenizer_bl.py gs://bucket/bl \
#       --config.mesh.data=1 --config.mesh.fsdp=-1 --config.data.source=tfds ...
#
# REPO (default: the origin of this checkout) and BRANCH (default: main) pick what is installed.
set -euo pipefail
action="${1:?usage: tpu_pod.sh setup|run TPU_NAME ZONE [RECIPE WORKDIR ...]}"
tpu="${2:?TPU_NAME}"
zone="${3:?ZONE}"
shift 3
repo="${REPO:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || true)}"
branch="${BRANCH:-main}"
ssh_all() { gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$1"; }

case "$action" in
  setup)
    [ -n "$repo" ] || { echo "set REPO=<git url of gigatok_jax>" >&2; exit 2; }
    ssh_all "rm -rf ~/gigatok_jax && git clone -q -b $branch $repo ~/gigatok_jax && \
cd ~/gigatok_jax && pip install -q -r requirements.txt -e '.[tpu]'"
    ;;
  run)
    recipe="${1:?RECIPE}"
    workdir="${2:?WORKDIR}"
    shift 2
    # Progress bars from 8-64 hosts interleave badly: plain log lines instead (process 0 logs).
    # Exit 75 = preempted (SIGTERM: a checkpoint was saved): run the same command again, up to
    # RESUMES times (default 3), which resumes from it. 0 = finished, 2 = user error, 3 = diverged.
    resumes="${RESUMES:-3}"
    while true; do
      status=0
      ssh_all "cd ~/gigatok_jax && python -m gigatok_jax.main --config=$recipe \
--workdir=$workdir --noprogress $*" || status=$?
      if [ "$status" -ne 75 ] || [ "$resumes" -le 0 ]; then exit "$status"; fi
      resumes=$((resumes - 1))
      echo "preempted (exit 75): resuming ($resumes more resumes allowed)" >&2
    done
    ;;
  *) echo "unknown action '$action' (setup or run)" >&2; exit 2 ;;
esac
