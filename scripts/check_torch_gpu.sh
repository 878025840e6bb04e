#!/usr/bin/env bash
# python/quill_torch on a CUDA GPU, against itself on the CPU and against quill (which runs on
# the CPU): the CUDA paths that scripts/check_torch_roundtrip.sh cannot reach on a machine
# without a GPU. Needs a python3 on the PATH that imports torch (with CUDA), numpy and
# safetensors, and one GPU.
#
#   scripts/check_torch_gpu.sh [WORKDIR]        (QUILL=path/to/quill, default target/release/quill;
#                                                 PARTS=checks or PARTS=speed for one part only)
#
# Checks (exit status 0 when all pass; each prints its figures):
# - the same 40 steps (2 x 64, B 8, T 32, no dropout, f32, TF32 off) on CUDA and on the CPU:
#   training and validation losses within 1e-4;
# - under torchrun with one process (NCCL, DistributedDataParallel with device_ids) as in one
#   plain process: within 1e-4;
# - `quill eval` of the CUDA checkpoint equals `quill_torch.eval` on CUDA and the trainer's own
#   last validation, within 1e-4;
# - `quill train --resume` of the CUDA checkpoint tracks PyTorch's CUDA continuation within 1e-4;
# - a CUDA run stopped at step 20 and resumed equals the uninterrupted one within 1e-5;
# - `--amp bf16 --tf32` (2 x 256, dropout 0.2, 300 steps) ends within 2% of the f32 run's
#   validation loss, and quill eval of its checkpoint equals PyTorch's f32 eval within 1e-4.
# Then, not a check, training tokens/s on this GPU for a few sizes (f32, TF32, bf16).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/torch_check_common.sh"
$PY -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null || { echo "error: torch sees no CUDA device" >&2; exit 1; }
echo "torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'), work dir $W"

MODEL=(--tokens "$TOK" --layers 2 --hidden 64 --embed 16 --dropout 0 --batch 8 --seq 32 --lr 3e-3
       --warmup 5 --eval-every 20 --save-every 20 --log-every 0)

PARTS=${PARTS:-all}
if [ "$PARTS" != speed ]; then
echo "== the same 40 steps on CUDA and on the CPU (f32, TF32 off)"
$PY -m quill_torch.train "${MODEL[@]}" --device cpu --max-steps 40 --out "$W/cpu" 2>"$W/cpu.log"
$PY -m quill_torch.train "${MODEL[@]}" --device cuda --max-steps 40 --out "$W/gpu" 2>"$W/gpu.log"
grep -E "^(model|done)" "$W/gpu.log"
compare "$W/cpu/shk-metrics.jsonl" "$W/gpu/shk-metrics.jsonl" train loss 1e-4 "CPU vs CUDA"
compare "$W/cpu/shk-metrics.jsonl" "$W/gpu/shk-metrics.jsonl" eval val_loss 1e-4 "CPU vs CUDA"

echo "== torchrun, one process (NCCL, DDP) vs one plain process on CUDA"
$PY -m torch.distributed.run --standalone --nproc-per-node 1 -m quill_torch.train "${MODEL[@]}" --device cuda \
    --max-steps 40 --out "$W/nccl" 2>"$W/nccl.log"
grep -E "^(model|done)" "$W/nccl.log"
$PY - "$W/nccl/shk-latest.safetensors" <<'EOF'
import sys
from quill_torch.checkpoint import load
w = load(sys.argv[1])[1]["writer"]
print(f"written by {w['program']} with backend {w['backend']} on {w['device']}, {w['processes']} process(es)")
sys.exit(0 if w["backend"] == "nccl" and w["device"] == "cuda" else 1)
EOF
compare "$W/gpu/shk-metrics.jsonl" "$W/nccl/shk-metrics.jsonl" train loss 1e-4 "plain vs NCCL"

CK=$W/gpu/shk-latest.safetensors
echo "== quill opens and evaluates the CUDA checkpoint"
quill_opens "$CK" "$W/gpu/shk-metrics.jsonl" cuda

echo "== quill train --resume continues the CUDA run to step 60; PyTorch continues it on CUDA"
continue_both "$CK" gpuc "quill vs PyTorch CUDA continuation" --device cuda

echo "== a CUDA run stopped at step 20 of 40 and resumed equals the uninterrupted one"
$PY -m quill_torch.train "${MODEL[@]}" --device cuda --max-steps 40 --steps-this-run 20 --out "$W/gr" 2>"$W/gr.log"
$PY -m quill_torch.train --tokens "$TOK" --resume "$W/gr/shk-latest.safetensors" --out "$W/gr" --device cuda --log-every 0 2>>"$W/gr.log"
compare "$W/gpu/shk-metrics.jsonl" "$W/gr/shk-metrics.jsonl" train loss 1e-5 "uninterrupted vs resumed on CUDA" 20
compare "$W/gpu/shk-metrics.jsonl" "$W/gr/shk-metrics.jsonl" eval val_loss 1e-5 "uninterrupted vs resumed on CUDA" 20

echo "== bf16 autocast with TF32 against f32 (2 x 256, dropout 0.2, B 32, T 64, 300 steps)"
MID=(--tokens "$TOK" --layers 2 --hidden 256 --embed 64 --dropout 0.2 --batch 32 --seq 64 --max-steps 300
     --eval-every 100 --save-every 0 --log-every 0 --device cuda)
$PY -m quill_torch.train "${MID[@]}" --out "$W/f32" 2>"$W/f32.log"
$PY -m quill_torch.train "${MID[@]}" --amp bf16 --tf32 --out "$W/bf16" 2>"$W/bf16.log"
$PY - "$W/f32/shk-metrics.jsonl" "$W/bf16/shk-metrics.jsonl" <<'EOF'
import json, sys
a, b = ([r for r in map(json.loads, open(p)) if r["kind"] == "eval"] for p in sys.argv[1:3])
for x, y in zip(a, b):
    print(f"    step {x['step']}: f32 {x['val_loss']:.4f}, bf16 + TF32 {y['val_loss']:.4f}")
rel = abs(b[-1]["val_loss"] - a[-1]["val_loss"]) / a[-1]["val_loss"]
print(f"bf16 + TF32 vs f32: final validation differs by {100 * rel:.2f}% (tolerance 2%)")
sys.exit(0 if rel <= 0.02 else 1)
EOF
q=$("$QUILL" eval -c "$W/bf16/shk-latest.safetensors" --tokens "$TOK" --split val --json)
t=$($PY -m quill_torch.eval -c "$W/bf16/shk-latest.safetensors" --tokens "$TOK" --split val --device cuda --json)
eval_compare "$q" "$t" 1e-4 "quill eval vs quill_torch.eval of the bf16-trained checkpoint"

echo "all CUDA checks passed"
fi
[ "$PARTS" = checks ] && exit 0

echo "== training tokens/s on this GPU (one process; median of the logged rates after step 20)"
speed() { # speed LABEL ARGS...
    local label=$1; shift
    $PY -m quill_torch.train --tokens "$TOK" --device cuda --max-steps 60 --eval-every 0 --save-every 0 \
        --log-every 0 --out "$W/speed" --name s "$@" 2>/dev/null
    $PY - "$label" "$W/speed/s-metrics.jsonl" <<'EOF'
import json, statistics, sys
r = [x["tokens_per_s"] for x in map(json.loads, open(sys.argv[2])) if x["kind"] == "train" and x["step"] > 20]
print(f"{sys.argv[1]}: {statistics.median(r):,.0f} tokens/s")
EOF
    rm -rf "$W/speed"
}
for prec in "f32:" "TF32:--tf32" "bf16 + TF32:--amp bf16 --tf32"; do
    label=${prec%%:*}; flags=${prec#*:}
    # shellcheck disable=SC2086
    speed "2 x 512, E 512, B 64, T 64, $label" --layers 2 --hidden 512 --embed 512 --batch 64 --seq 64 $flags
    # shellcheck disable=SC2086
    speed "3 x 1024, E 1024, B 128, T 128, $label" --layers 3 --hidden 1024 --embed 1024 --batch 128 --seq 128 $flags
done
