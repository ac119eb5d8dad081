#!/usr/bin/env bash
# GPU checks in one go, outputs and numbers in one folder:
#   1. training smoke under torchrun (1 process, NCCL on cuda:0): N/2 steps, then --resume auto
#      to N steps (checkpoint broadcast, distributed validation, DDP on the GPU);
#   2. `fastsam3d bench models --device cuda` (encoder / decoder times on the GPU), and Table 3
#      with the paper's 2D baselines beside the 3D models (table3.json);
#   3. `fastsam3d eval` on a bundled sample with the bundled model on the GPU (under torchrun).
# --dry-run runs the same steps on the CPU (gloo, --device cpu, the test-tiny model, tiny
# sizes), so CI can check the script itself. The training is a plumbing check (a few steps of
# everything trained: its validation Dice is no quality figure).
#
# usage: scripts/gpu_check.sh [--dry-run] [--out DIR] [--steps N]
# env:   PYTHON (default .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out=""
steps=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --out) out="$2"; shift ;;
        --steps) steps="$2"; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
out="${out:-outputs/gpu_check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if [ "$dry_run" = 1 ]; then
    device=cpu backend=gloo amp=none model=test-tiny batch=1 threads=1
    steps="${steps:-2}"
    bench_args=(--models test-tiny --runtimes torch --rounds 1 --warmup 0 --no-accuracy)
    table3_args=(--models mobilesam,test-tiny --slices 1 --rounds 1 --warmup 0 --no-accuracy)
    eval_model=(--model test-tiny --checkpoint random)
    eval_args=(ct --structures spleen --clicks 1,2)
else
    if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device visible to torch; use --dry-run for the CPU steps" >&2
        exit 1
    fi
    device=cuda backend=nccl amp=bf16 model=fastsam3d-lite batch=2 threads=4
    steps="${steps:-10}"
    bench_args=(--rounds 7 --warmup 2)
    table3_args=(--models sam-vit-b,mobilesam,tinysam,medsam,sam-med2d,sam-med3d,fastsam3d
        --slices 16 --rounds 5 --warmup 2)
    weights="$("$PYTHON" -c \
        "import fastsam3d; print(fastsam3d.get_spec('fastsam3d-lite').bundled_weights())")"
    eval_model=(--model fastsam3d-lite --checkpoint "$weights")
    eval_args=(ct_dicom --structures liver,spleen,kidney_left,kidney_right,stomach
        --clicks 1,3,5)
fi
half=$((steps / 2 > 0 ? steps / 2 : 1))
export OMP_NUM_THREADS="$threads"

timings="$out/timings.tsv"
printf 'step\tseconds\tstatus\n' > "$timings"
failed=0
step() {  # step NAME COMMAND...: run, log to NAME.log, record the time
    local name="$1" start end status=ok
    shift
    echo "== $name: $*"
    start=$(date +%s%N)
    if ! "$@" > "$out/$name.log" 2>&1; then
        status=failed
        failed=1
        tail -n 30 "$out/$name.log" >&2
    fi
    end=$(date +%s%N)
    printf '%s\t%d.%d\t%s\n' "$name" $(((end - start) / 1000000000)) \
        $(((end - start) / 100000000 % 10)) "$status" >> "$timings"
    echo "   $status"
}

{
    echo "mode: $([ "$dry_run" = 1 ] && echo "dry run (CPU)" || echo GPU)"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'devices', torch.cuda.device_count(), 'nccl', torch.distributed.is_nccl_available())"
    if command -v nvidia-smi > /dev/null; then nvidia-smi; fi
} > "$out/environment.txt" 2>&1

config="$out/train.toml"
cat > "$config" <<EOF
[run]
out_dir = "$out/train"
seed = 0
steps = $steps
device = "$device"
backend = "$backend"
amp = "$amp"
threads = $threads
checkpoint_every = $half
validate_every = $steps

[data]
root = "ct"
layout = "samples"
structures = ["spleen", "liver"]
jitter_mm = 5.0
batch_size = $batch

[optim]
lr = 1e-5
schedule = "constant"
clip_grad = 1.0

[model]
name = "$model"

[interactive]
click_iterations = 3
trainable = "all"

[validation]
root = "ct"
layout = "samples"
clicks = [1, 2]
structures = ["spleen"]
max_cases = 1
EOF

torchrun=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1)
step train_first_half "${torchrun[@]}" -m fastsam3d.train --config "$config" --steps "$half"
step train_resumed "${torchrun[@]}" -m fastsam3d.train --config "$config" --resume auto
step train_outputs "$PYTHON" - "$out/train" "$steps" <<'EOF'
import csv, json, struct, sys
from pathlib import Path
folder, steps = Path(sys.argv[1]), int(sys.argv[2])
rows = list(csv.DictReader((folder / "metrics.csv").open()))
assert [int(r["step"]) for r in rows] == list(range(1, steps + 1)), rows
assert (folder / "validation.csv").is_file(), "no validation.csv"
with (folder / "model.safetensors").open("rb") as f:  # the header, without importing torch
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
assert "model_config" in header["__metadata__"], sorted(header["__metadata__"])
print(f"{steps} steps, loss {rows[0]['loss']} -> {rows[-1]['loss']}, "
      f"median {sorted(float(r['samples_per_s']) for r in rows)[len(rows) // 2]:.2f} samples/s")
EOF
step bench "$PYTHON" -m fastsam3d.cli bench models --device "$device" --threads "$threads" \
    "${bench_args[@]}" --json "$out/bench.json"
step table3 "$PYTHON" -m fastsam3d.cli bench models --device "$device" --threads "$threads" \
    "${table3_args[@]}" --json "$out/table3.json"
step eval "${torchrun[@]}" -m fastsam3d.cli eval "${eval_args[@]}" --layout samples \
    "${eval_model[@]}" --no-baseline --runtime torch --device "$device" --threads "$threads" \
    --out "$out/eval"

echo "outputs in $out (timings.tsv, *.log, train/, bench.json, table3.json, eval/)"
cat "$timings"
exit "$failed"
