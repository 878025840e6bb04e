# Sourced by scripts/check_torch_roundtrip.sh and scripts/check_torch_gpu.sh after they set
# ROOT (the repository) and pass their WORKDIR argument: the quill binary ($QUILL, default
# target/release/quill), the work directory $W, python3 as $PY with quill_torch importable,
# the token file $TOK of the bundled corpus (prepared by quill), and the comparisons.
QUILL=${QUILL:-$ROOT/target/release/quill}
W=${1:-$(mktemp -d)}
mkdir -p "$W"
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
PY=python3
[ -x "$QUILL" ] || { echo "error: no quill binary at $QUILL (cargo build --release, or set QUILL)" >&2; exit 1; }
$PY -c 'import torch, numpy, safetensors' || { echo "error: $PY cannot import torch, numpy and safetensors" >&2; exit 1; }
TOK=$W/shk.tokens
"$QUILL" prepare --corpus "$ROOT/corpora/shakespeare.txt" --val-fraction 0.01 --out "$W" --name shk >/dev/null 2>"$W/prepare.log"

# Compares the `kind` records of two metrics logs at the steps both have: max |a - b| of `key`.
compare() { # compare LOG_A LOG_B KIND KEY TOL LABEL [FROM_STEP]
    $PY - "$@" <<'EOF'
import json, sys
a, b, kind, key, tol, label = sys.argv[1:7]
start = int(sys.argv[7]) if len(sys.argv) > 7 else 0
def read(p):
    return {r["step"]: r[key] for r in map(json.loads, open(p)) if r["kind"] == kind and r["step"] > start}
ra, rb = read(a), read(b)
steps = sorted(set(ra) & set(rb))
assert steps, f"{label}: no common {kind} records"
diff = max(abs(ra[s] - rb[s]) for s in steps)
print(f"{label}: {kind} {key} at steps {steps}: max |diff| = {diff:.2e} (tolerance {tol})")
for s in steps:
    print(f"    step {s}: {ra[s]:.6f} vs {rb[s]:.6f}")
sys.exit(0 if diff <= float(tol) else 1)
EOF
}

# Compares two `eval --json` answers (quill's and quill_torch's): same tokens, |loss diff| <= TOL.
eval_compare() { # eval_compare JSON_A JSON_B TOL LABEL
    $PY - "$@" <<'EOF'
import json, sys
a, b = (json.loads(s) for s in sys.argv[1:3])
tol, label = float(sys.argv[3]), sys.argv[4]
d = abs(a["loss_per_token"] - b["loss_per_token"])
print(f"{label}: {a['loss_per_token']:.6f} vs {b['loss_per_token']:.6f} over {a['tokens']} tokens: |diff| = {d:.2e} (tolerance {tol})")
sys.exit(0 if a["tokens"] == b["tokens"] and d <= tol else 1)
EOF
}

# quill opens checkpoint CK (info, a sample); quill eval on $TOK's validation split equals
# quill_torch.eval (on DEVICE), and quill eval with the trainer's B = 8, T = 32 equals the
# trainer's own last validation in its metrics log METRICS; each within 1e-4.
quill_opens() { # quill_opens CK METRICS DEVICE
    local q t q8 last
    "$QUILL" info "$1"
    "$QUILL" sample -c "$1" --prime "ROMEO:" --length 80 --seed 1 >"$W/sample.txt"
    echo "sample: $(head -c 80 "$W/sample.txt" | tr '\n' '|')"
    q=$("$QUILL" eval -c "$1" --tokens "$TOK" --split val --json)
    t=$($PY -m quill_torch.eval -c "$1" --tokens "$TOK" --split val --device "$3" --json)
    eval_compare "$q" "$t" 1e-4 "quill eval vs quill_torch.eval on $3"
    q8=$("$QUILL" eval -c "$1" --tokens "$TOK" --split val --batch 8 --seq 32 --json)
    last=$($PY -c '
import json, sys
v = [r for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "eval"][-1]["val_loss"]
print(json.dumps({"loss_per_token": v, "tokens": json.loads(sys.argv[2])["tokens"]}))' "$2" "$q8")
    eval_compare "$q8" "$last" 1e-4 "quill eval (B 8, T 32) vs the trainer's last validation"
}

# quill train --resume (in $W/q) and quill_torch.train (in $W/OUT, with TORCH_ARGS) both
# continue checkpoint CK, saved at step 40, to step 60; their training and validation losses
# from step 40 on agree within 1e-4.
continue_both() { # continue_both CK OUT LABEL [TORCH_ARGS...]
    local ck=$1 out=$2 label=$3
    shift 3
    "$QUILL" train --tokens "$TOK" --resume "$ck" --max-steps 60 --out "$W/q" --quiet 2>"$W/q.log"
    grep -E "^(resuming|done)" "$W/q.log"
    $PY -m quill_torch.train --tokens "$TOK" --resume "$ck" --max-steps 60 --out "$W/$out" \
        --log-every 0 "$@" 2>"$W/$out.log"
    compare "$W/q/shk-metrics.jsonl" "$W/$out/shk-metrics.jsonl" train loss 1e-4 "$label" 40
    compare "$W/q/shk-metrics.jsonl" "$W/$out/shk-metrics.jsonl" eval val_loss 1e-4 "$label" 40
}
