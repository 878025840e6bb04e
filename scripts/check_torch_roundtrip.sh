#!/usr/bin/env bash
# The PyTorch round trip, checked on CPU with the python3 on the PATH (which must import torch,
# numpy and safetensors): quill prepares a corpus; python/quill_torch trains a small model on it with
# 1 process and with 2 gloo processes (same global batch) and the losses must agree within
# 1e-4; quill opens the checkpoint (info, sample) and `quill eval` must equal PyTorch's loss on
# the same tokens within 1e-4; `quill train --resume` continues the PyTorch run and must track
# PyTorch's own continuation within 1e-4, and PyTorch continues a quill run as quill does;
# PyTorch resumes its own run exactly; a word_language_model-style model saved by PyTorch is
# imported by `quill import` and `quill eval` equals PyTorch's loss on a text within 1e-4.
# Finally, bad input to the trainer gets one `error:` line naming it.
#
#   scripts/check_torch_roundtrip.sh [WORKDIR]        (QUILL=path/to/quill, default target/release/quill)
#
# Exit status 0 when every check passes; each check prints its figures.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export GLOO_SOCKET_IFNAME=lo
# One thread per process (what torchrun sets for several): on a busy machine a second OpenMP
# thread per process costs far more than it gives at these sizes.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
. "$ROOT/scripts/torch_check_common.sh"
echo "torch $($PY -c 'import torch; print(torch.__version__)'), work dir $W"

# The same flags for quill train and quill_torch.train, and the trainer's own.
MODEL=(--tokens "$TOK" --layers 2 --hidden 64 --embed 16 --dropout 0 --batch 8 --seq 32 --lr 3e-3
       --warmup 5 --eval-every 20 --save-every 20)
TORCH=(--log-every 0 --device cpu)
# quill train's regularisers that the PyTorch trainer does not have, off.
PLAIN=(--dropout-mask element --dropout-input 0 --dropout-embed 0 --weight-drop 0 --ema 0 --sampled-softmax 0 --shift-windows false)


echo "== 1 process vs 2 gloo processes, global batch 8, 40 steps"
$PY -m quill_torch.train "${MODEL[@]}" "${TORCH[@]}" --max-steps 40 --out "$W/p1" 2>"$W/p1.log"
tail -n 3 "$W/p1.log"
$PY -m torch.distributed.run --standalone --nproc-per-node 2 -m quill_torch.train "${MODEL[@]}" "${TORCH[@]}" \
    --max-steps 40 --out "$W/p2" 2>"$W/p2.log"
grep -E "^(model|done)" "$W/p2.log"
compare "$W/p1/shk-metrics.jsonl" "$W/p2/shk-metrics.jsonl" train loss 1e-4 "1 vs 2 processes"
compare "$W/p1/shk-metrics.jsonl" "$W/p2/shk-metrics.jsonl" eval val_loss 1e-4 "1 vs 2 processes"

CK=$W/p2/shk-latest.safetensors
echo "== quill opens the PyTorch checkpoint; quill eval vs PyTorch on the same tokens (validation split)"
quill_opens "$CK" "$W/p2/shk-metrics.jsonl" cpu

echo "== quill train --resume continues the 2-process run to step 60; PyTorch continues it too"
continue_both "$CK" p2c "quill vs PyTorch continuation"
grep -q "resuming .* at step 40" "$W/q.log"
grep -q "^done: 60 steps (20 this run" "$W/q.log"

echo "== PyTorch continues a quill train run (stopped at step 20 of 40) as quill does"
"$QUILL" train "${MODEL[@]}" "${PLAIN[@]}" --max-steps 40 --steps-this-run 20 --out "$W/qa" --quiet 2>"$W/qa.log"
cp "$W/qa/shk-latest.safetensors" "$W/qa-step20.safetensors"
"$QUILL" train --tokens "$TOK" --resume "$W/qa/shk-latest.safetensors" --out "$W/qa" --quiet 2>>"$W/qa.log"
$PY -m quill_torch.train --tokens "$TOK" --resume "$W/qa-step20.safetensors" --out "$W/pa" --device cpu --log-every 0 2>"$W/pa.log"
compare "$W/qa/shk-metrics.jsonl" "$W/pa/shk-metrics.jsonl" train loss 1e-4 "quill vs PyTorch continuation of a quill run" 20
compare "$W/qa/shk-metrics.jsonl" "$W/pa/shk-metrics.jsonl" eval val_loss 1e-4 "quill vs PyTorch continuation of a quill run" 20

echo "== PyTorch resumes its own run (stopped at step 20 of 40) exactly"
$PY -m quill_torch.train "${MODEL[@]}" "${TORCH[@]}" --max-steps 40 --steps-this-run 20 --out "$W/p1r" 2>"$W/p1r.log"
$PY -m quill_torch.train --tokens "$TOK" --resume "$W/p1r/shk-latest.safetensors" --out "$W/p1r" --device cpu --log-every 0 2>>"$W/p1r.log"
grep -E "^done" "$W/p1r.log"
compare "$W/p1/shk-metrics.jsonl" "$W/p1r/shk-metrics.jsonl" train loss 1e-5 "uninterrupted vs resumed" 20
compare "$W/p1/shk-metrics.jsonl" "$W/p1r/shk-metrics.jsonl" eval val_loss 1e-5 "uninterrupted vs resumed" 20

echo "== quill import of a word_language_model-style model saved by PyTorch; quill eval vs PyTorch"
$PY - "$W/wlm" <<'EOF'
import os, sys, torch, torch.nn as nn, torch.nn.functional as F
from safetensors.torch import save_file
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
torch.manual_seed(3)
# pytorch/examples word_language_model's RNNModel('LSTM', ntoken, 16, 24, 2): encoder, rnn, decoder.
words = "the cat dog sat ran on a mat log and big small".split()
idx2word = ["<unk>"] + words + ["<eos>"]
V = len(idx2word)
encoder, rnn, decoder = nn.Embedding(V, 16), nn.LSTM(16, 24, 2), nn.Linear(24, V)
for p in list(encoder.parameters()) + list(rnn.parameters()) + list(decoder.parameters()):
    nn.init.uniform_(p, -0.4, 0.4)
sd = {f"{n}.{k}": v.detach().contiguous() for n, m in (("encoder", encoder), ("rnn", rnn), ("decoder", decoder))
      for k, v in m.state_dict().items()}
save_file(sd, f"{d}/model.safetensors")
open(f"{d}/vocab.txt", "w").write("\n".join(idx2word) + "\n")
g = torch.Generator().manual_seed(5)
lines = [" ".join(words[i] for i in torch.randint(0, len(words), (int(n),), generator=g))
         for n in torch.randint(3, 9, (40,), generator=g)]
open(f"{d}/text.txt", "w").write("\n".join(lines) + "\n")
# word_language_model's tokenisation: words by whitespace, <eos> at each line end; one stream.
ids = torch.tensor([idx2word.index(w) for l in lines for w in l.split() + ["<eos>"]])
with torch.no_grad():
    y, _ = rnn(encoder(ids[:-1, None]))
    loss = F.cross_entropy(decoder(y)[:, 0], ids[1:])
open(f"{d}/torch_loss.txt", "w").write(f"{loss.item():.10f}\n")
EOF
"$QUILL" import --weights "$W/wlm/model.safetensors" --vocab "$W/wlm/vocab.txt" --out "$W/wlm/imported.safetensors"
qi=$("$QUILL" eval -c "$W/wlm/imported.safetensors" --file "$W/wlm/text.txt" --batch 1 --seq 100000 --json)
$PY - "$qi" "$(cat "$W/wlm/torch_loss.txt")" <<'EOF'
import json, sys
q, t = json.loads(sys.argv[1])["loss_per_token"], float(sys.argv[2])
print(f"imported model: quill eval {q:.6f}, PyTorch {t:.6f}: |diff| = {abs(q - t):.2e} (tolerance 1e-4)")
sys.exit(0 if abs(q - t) <= 1e-4 else 1)
EOF

echo "== quill_torch refuses bad input with one error line naming it"
refuse() { # refuse EXPECTED_TEXT ARGS...: the trainer must exit 1 with "error: ...EXPECTED_TEXT..."
    local want=$1; shift
    local out rc=0
    out=$($PY -m quill_torch.train "$@" 2>&1 >/dev/null) || rc=$?
    local line
    line=$(printf '%s\n' "$out" | tail -n 1)
    if [ "$rc" != 1 ] || [[ "$line" != error:*"$want"* ]]; then
        echo "FAILED: expected exit 1 and an error with '$want', got $rc: $out"; exit 1
    fi
    echo "refused: $line"
}
head -c 5000 "$TOK" >"$W/cut.tokens"
cp "$TOK" "$W/flipped.tokens"
printf '\x07' | dd of="$W/flipped.tokens" bs=1 seek=3000 conv=notrunc 2>/dev/null
refuse "truncated or damaged" --tokens "$W/cut.tokens" --max-steps 2 --out "$W/e"
refuse "data checksum mismatch" --tokens "$W/flipped.tokens" --max-steps 2 --out "$W/e"
refuse "give a limit" --tokens "$TOK" --out "$W/e"
refuse "holds weights only" --tokens "$TOK" --resume "$W/wlm/imported.safetensors" --out "$W/e"
refuse "was trained with batch 8" --tokens "$TOK" --resume "$CK" --batch 16 --out "$W/e"
cp "$CK" "$W/flipped.safetensors"
printf '\x01' | dd of="$W/flipped.safetensors" bs=1 seek=$(( $(stat -c %s "$CK") - 100 )) conv=notrunc 2>/dev/null
refuse "checksum mismatch" --tokens "$TOK" --resume "$W/flipped.safetensors" --out "$W/e"
refuse "invalid dropout" --tokens "$TOK" --dropout 1.5 --max-steps 2 --out "$W/e"
refuse "invalid forget-bias" --tokens "$TOK" --forget-bias nan --max-steps 2 --out "$W/e"
refuse "only initialises a new model" --tokens "$TOK" --resume "$CK" --forget-bias 0 --out "$W/e"
"$QUILL" train "${MODEL[@]}" --max-steps 2 --out "$W/reg" --quiet 2>"$W/reg.log"
refuse "which the PyTorch trainer does not implement" --tokens "$TOK" --resume "$W/reg/shk-latest.safetensors" --out "$W/e"

echo "all PyTorch round-trip checks passed"
