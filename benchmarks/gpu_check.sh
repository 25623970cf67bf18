#!/usr/bin/env bash
# GPU figures for issue 12 (at most ten minutes on one GPU): step time and step memory of every
# variant against PEFT's (and the frozen-model floor) on a randomly initialised RoBERTa-base-sized
# model (12 layers, hidden 768; nothing downloaded), batch 32 x 128 tokens, at fp32 and at bf16
# (the forward under torch.autocast, parameters and optimiser state float32, as
# `lorabench run --precision bf16` trains). Then one tiny `lorabench run --device cuda` per
# precision, whose records hold CUDA's peak allocated memory and device-synchronised seconds,
# and a two-worker `lorabench run --workers 2` across the device.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default gpu_check/; DEVICE=cuda:1 picks a GPU)
#
# Writes OUT_DIR/step_time_{fp32,bf16}.{md,json} and OUT_DIR/run_{fp32,bf16}/results.db, and
# prints the bf16/fp32 step-time ratio per configuration (both timed interleaved in one run).
# Every stage has its own time limit, so the script ends within ten minutes even if one hangs.
set -euo pipefail

OUT="${1:-gpu_check}"
DEVICE="${DEVICE:-cuda}"
REPEATS="${REPEATS:-10}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1

python - <<PY
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh needs a CUDA GPU; torch sees none (torch " + torch.__version__ + ")")
print("GPU:", torch.cuda.get_device_name(torch.device("$DEVICE")), "torch", torch.__version__)
PY

# fp32 alone, then bf16 with every configuration also built at fp32 and interleaved in the same
# run (--against-precision): its last table is each configuration's bf16/fp32 step-time ratio,
# paired per repeat. Step memory is measured at each precision.
echo "== step time and memory, fp32 =="
timeout 150 python benchmarks/step_time.py --random roberta-base --device "$DEVICE" \
  --precision fp32 --batch-size 32 --seq-len 128 --repeats "$REPEATS" --warmup 3 \
  --json "$OUT/step_time_fp32.json" | tee "$OUT/step_time_fp32.md"
echo "== step time and memory, bf16 (and bf16/fp32, interleaved) =="
timeout 240 python benchmarks/step_time.py --random roberta-base --device "$DEVICE" \
  --precision bf16 --against-precision fp32 --batch-size 32 --seq-len 128 \
  --repeats "$REPEATS" --warmup 3 --json "$OUT/step_time_bf16.json" | tee "$OUT/step_time_bf16.md"

for precision in fp32 bf16; do
  echo "== lorabench run --device $DEVICE --precision $precision (planted task, 50 steps) =="
  timeout 60 lorabench run --variants lora --tasks planted-tiny --budget steps=50 \
    --device "$DEVICE" --precision "$precision" --out "$OUT/run_$precision" --quiet \
    --no-adapters
  python - "$OUT/run_$precision/results.db" <<'PY'
import sys
from lorabench.results.store import ResultStore
for r in ResultStore(sys.argv[1], create=False).records():
    s = r.spent
    print(f"  {r.variant} {r.config['train'].get('precision', 'fp32')} on {r.config['device']}: "
          f"{s['train_seconds']:.2f} s training, peak {s['peak_memory_bytes'] / 2**20:.1f} MiB "
          f"({s['memory_kind']}), {s.get('skipped_steps', 0)} skipped steps")
PY
done

echo "== lorabench run --workers across the device (lora and dora, 2 seeds, 50 steps) =="
# Two workers on one GPU (round-robin over the visible GPUs when there are several): the
# records say which device each run used.
timeout 90 lorabench run --variants lora,dora --tasks planted-tiny --seeds 2 --budget steps=50 \
  --workers 2 --device "$DEVICE" --out "$OUT/workers" --quiet --no-adapters
python - "$OUT/workers/results.db" <<'PY'
import sys
from lorabench.results.store import ResultStore
for r in ResultStore(sys.argv[1], create=False).records():
    print(f"  {r.variant} seed {r.seed} on {r.config['device']}: "
          f"{r.spent['train_seconds']:.2f} s training, score {r.score:.4f}")
PY
