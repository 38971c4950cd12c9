#!/usr/bin/env bash
# The docs/OPS.md walkthrough, end to end on one machine, with a tiny random-weight SD1 model: every command
# of the guide in order, each echoed with its exit code. Used to check the guide; takes ~10 min on 2 cores.
#   deployments/walkthrough.sh [WORKDIR]          (default /tmp/mace-ops-walkthrough; port 4200 must be free)
# `mace` is the console script of `pip install -e .`; without it this falls back to `python -m mace_cli.main`.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
D="${1:-/tmp/mace-ops-walkthrough}"
PORT="${MACE_WALKTHROUGH_PORT:-4200}"
PY="${PYTHON:-python}"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
command -v mace >/dev/null || mace() { "$PY" -m mace_cli.main "$@"; }
step() { echo; echo "### $*"; }
run() { echo "+ $*"; "$@"; local rc=$?; echo "[exit $rc]"; return 0; }
# the state type of the newest run of flow $1 ("" while none); the number of running runs of flow $1
last_state() { prefect flow-run ls --flow-name "$1" --limit 1 -o json 2>/dev/null | "$PY" -c 'import json,sys
try: r = json.load(sys.stdin)
except ValueError: r = []
print(r[0]["state"]["type"] if r else "")'; }
n_running() { prefect flow-run ls --flow-name "$1" --state-type RUNNING -o json 2>/dev/null | "$PY" -c 'import json,sys
try: print(len(json.load(sys.stdin)))
except ValueError: print(0)'; }
wait_final() { for _ in $(seq 1 "${2:-180}"); do case "$(last_state "$1")" in COMPLETED|FAILED|CRASHED|CANCELLED) return;; esac; sleep 5; done; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done; }
trap cleanup EXIT
rm -rf "$D"; mkdir -p "$D"

step "0. a tiny model and an erase config (stand-ins for a real model and configs/*.yaml)"
"$PY" - "$D" <<'EOF'
import sys, yaml
from tests.tiny_sd.conftest import build_tiny_pipeline
d = sys.argv[1]
build_tiny_pipeline("sd1", seed=0).save_pretrained(f"{d}/model", safe_serialization=True)
cfg = {"name": "demo", "seed": 7, "concepts": [{"name": c, "type": "object", "mapping": "forest"} for c in ("cat", "dog")],
       "model": {"path": f"{d}/model"}, "prompts": {"num_prompts": 4}, "images": {"num_images": 2, "steps": 2, "batch_size": 2},
       "masks": {"backend": "attention"}, "prior": {"captions": "miniworld", "shard_size": 5, "batch_size": 4},
       "lora": {"steps": 2, "learning_rate": 1e-3}, "execution": {"store": f"{d}/store"}}
yaml.safe_dump(cfg, open(f"{d}/demo.yaml", "w"), sort_keys=False)
EOF

step "1. server with authentication, loopback only"
export PREFECT_HOME="$D/prefect-home"
export PREFECT_SERVER_API_AUTH_STRING="admin:$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')"
setsid prefect server start --host 127.0.0.1 --port "$PORT" > "$D/server.log" 2>&1 &
PIDS+=($!)
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_API_AUTH_STRING="$PREFECT_SERVER_API_AUTH_STRING"
t0=$(date +%s); until curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; do sleep 2; done
echo "server healthy after $(( $(date +%s) - t0 )) s"
run curl -s -o /dev/null -w '%{http_code} without the auth string\n' -X POST "$PREFECT_API_URL/flows/filter"
run curl -s -o /dev/null -w '%{http_code} with it\n' -X POST -u "$PREFECT_API_AUTH_STRING" "$PREFECT_API_URL/flows/filter"

step "2. pools, GPU slots, zombie automation (idempotent)"
run mace ops setup --gpu-slots 2
run mace ops setup --gpu-slots 2
run prefect work-pool ls
run prefect global-concurrency-limit ls

step "3. deploy"
run mace deploy --gpu-slots 2
export MACE_REPO_DIR="$REPO"   # the same with Prefect's CLI (a redeploy changes nothing)
run prefect --no-prompt deploy -n erase/default -n add/default -n evaluate/nightly -n prior/default -n train_lora/gpu
run prefect deployment ls

step "4. workers: one CPU (erase/add runs), two GPU (LoRA jobs; one per GPU with CUDA_VISIBLE_DEVICES)"
setsid bash -c "$(declare -f mace); mace ops worker --pool cpu --name cpu-0 --limit 2" > "$D/worker-cpu-0.log" 2>&1 & PIDS+=($!)
setsid bash -c "$(declare -f mace); CUDA_VISIBLE_DEVICES=0 mace ops worker --pool gpu --name gpu-0" > "$D/worker-gpu-0.log" 2>&1 & PIDS+=($!)
setsid bash -c "$(declare -f mace); CUDA_VISIBLE_DEVICES=1 mace ops worker --pool gpu --name gpu-1" > "$D/worker-gpu-1.log" 2>&1 & PIDS+=($!)
sleep 20

step "5. run the erase deployment (LoRA jobs fan out to mace-train-lora/gpu)"
mace ops params "$D/demo.yaml" > "$D/params.json"; PARAMS="$(cat "$D/params.json")"
t0=$(date +%s)
run timeout 900 prefect deployment run mace-erase/default --params "$(cat "$D/params.json")" --watch --watch-interval 5
echo "erase deployment run: $(( $(date +%s) - t0 )) s"
run prefect flow-run ls --flow-name mace-erase --flow-name mace-train-lora --limit 10

step "6. what the UI shows: artifacts"
run prefect artifact ls
run prefect artifact inspect mace-demo-stages

step "7. bad parameters are refused before any worker sees them"
run prefect deployment run mace-train-lora/gpu --param seed=not-a-number

step "8. re-erase incrementally: mace add (LoRA jobs to the gpu pool), then the concept-list watcher"
t0=$(date +%s)
MACE_LORA_DEPLOYMENT=mace-train-lora/gpu run mace add demo horse --store "$D/store"
echo "add: $(( $(date +%s) - t0 )) s"
run mace status demo --store "$D/store"
printf 'cat\ndog\nhorse\n' > "$D/concepts.txt"
setsid bash -c "$(declare -f mace); mace ops watch-concepts '$D/concepts.txt' --run demo --store '$D/store' --every 2" \
  > "$D/watcher.log" 2>&1 & PIDS+=($!)
sleep 30; printf 'cat\ndog\nhorse\nbird,object,forest\n' > "$D/concepts.txt"   # the watcher starts mace-add/default
until grep -q started "$D/watcher.log"; do sleep 2; done; cat "$D/watcher.log"
sleep 5; wait_final mace-add
printf 'cat\ndog\nbird,object,forest\n' > "$D/concepts.txt"                     # cron style: remove horse
run mace ops watch-concepts "$D/concepts.txt" --run demo --store "$D/store" --once
sleep 10; wait_final mace-add
run prefect flow-run ls --flow-name mace-add --limit 3
run mace status demo --store "$D/store"

step "9. nightly re-evaluation schedule (inactive until resumed)"
run prefect deployment schedule ls mace-evaluate/nightly
SID=$(prefect deployment schedule ls mace-evaluate/nightly | grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' | head -1)
run prefect deployment schedule resume mace-evaluate/nightly "$SID"
run prefect deployment schedule ls mace-evaluate/nightly
run prefect deployment schedule pause mace-evaluate/nightly "$SID"

step "10. server restart during a run: the run goes on, its LoRA jobs finish, nothing is lost"
PARAMS2="$(echo "$PARAMS" | "$PY" -c 'import json,sys; p=json.load(sys.stdin); p["cfg"]["seed"]=8; p["cfg"]["name"]="demo-seed8"; print(json.dumps(p))')"
run prefect deployment run mace-erase/default --params "$PARAMS2"
until [ "$(n_running mace-train-lora)" -gt 0 ]; do sleep 2; done
echo "a LoRA job is running: stopping the server for 15 s"
kill -TERM -- "-${PIDS[0]}"; sleep 15
setsid prefect server start --host 127.0.0.1 --port "$PORT" >> "$D/server.log" 2>&1 &
PIDS[0]=$!
t0=$(date +%s); until curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1; do sleep 2; done
echo "server back after $(( $(date +%s) - t0 )) s"
wait_final mace-erase
run prefect flow-run ls --flow-name mace-erase --flow-name mace-train-lora --limit 12
run mace status demo-seed8 --store "$D/store"

step "11. a tampered artifact (the prior): verify finds it, --repair deletes it, the next run rebuilds it"
f=$(find "$D/store/prior" -type f ! -name manifest.json | sort | head -1); printf 'x' >> "$f"
run mace artifacts verify --store "$D/store"
run mace artifacts verify --store "$D/store" --repair
MACE_LORA_DEPLOYMENT=mace-train-lora/gpu run mace erase "$D/demo.yaml" --name demo-rebuilt

step "12. an unreachable store fails in one line before any work"
run mace erase "$D/demo.yaml" --store "$D/no-such-dir/file.txt/store"
echo; echo "walkthrough done"
