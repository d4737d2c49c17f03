#!/usr/bin/env bash
# The full offline evaluations behind docs/eval.md ("All examples") and docs/experiments.md
# ("20 seeds: ρ = 0.9 against LoRA"). Long CPU runs, one at a time, niced, one torch thread each:
#
#   scripts/science.sh            # everything: finetune (if its adapter is missing), eval, sweep
#   scripts/science.sh eval       # only the finetune (if missing) and the full `ina eval`
#   scripts/science.sh sweep      # only the 20-seed sweep
#
# Resumable: a finished step is skipped (the adapter, eval-full/paired.md, finished sweep runs), so
# rerun the same line after an interruption. Results go to $SCIENCE_DIR (default outputs/science):
#   eval-full/    eval_results.md/.json (`ina eval`), paired.md/.json, samples.json
#   sweep-rho09/  runs/*, results.md/.csv/.png (`ina sweep`), paired.md (every cell, and the pairs)
#   logs/         each step's output, times.log (wall / CPU per step), load.log (load average a minute)
# On the project's shared 2-core CPU machine: about 3 h of CPU in all (measured: see the docs).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=1 # `ina finetune` has no --torch_threads; the others get --torch_threads 1 too
what=${1:-all}
out=${SCIENCE_DIR:-outputs/science}
logs=$out/logs
mkdir -p "$logs"
adapter=outputs/ina-finetune-smollm2

(while sleep 60; do echo "$(date -u +%FT%TZ) $(cut -d' ' -f1-3 /proc/loadavg)"; done >>"$logs/load.log") &
sampler=$!
trap 'kill "$sampler"' EXIT

# timed NAME COMMAND...: run niced, output to logs/NAME.log, wall and CPU time appended to logs/times.log
timed() {
  local name=$1
  shift
  echo "$(date -u +%FT%TZ) $name: $*" | tee -a "$logs/times.log"
  /usr/bin/time -a -o "$logs/times.log" -f "$name: %e s wall, %U s user + %S s sys CPU" \
    nice -n 10 "$@" >>"$logs/$name.log" 2>&1
  tail -n 1 "$logs/times.log"
}

if [ "$what" = all ] || [ "$what" = eval ]; then
  if [ ! -f "$adapter/adapter_config.json" ]; then
    timed finetune .venv/bin/ina finetune --output_dir "$adapter"
  fi
  if [ ! -f "$out/eval-full/paired.md" ]; then
    # `ina eval --adapter ina=$adapter --output_dir $out/eval-full --torch_threads 1`, keeping lm-eval's
    # per-example scores for the paired intervals (scripts/eval_paired.py)
    timed eval .venv/bin/python scripts/eval_paired.py --adapter "ina=$adapter" \
      --output_dir "$out/eval-full" --torch_threads 1
  fi
fi

if [ "$what" = all ] || [ "$what" = sweep ]; then
  sweep=(.venv/bin/ina sweep --output_dir "$out/sweep-rho09" --seeds "$(seq -s, 1 20)"
    --select_on dev --dev_fraction 0.2 --max_train_samples 1000 --torch_threads 1 --disable_tqdm True)
  # The grid ρ ∈ {0, 0.9} × lr ∈ {1e-3, 3e-3} × 20 seeds, in pieces so that each ratio at the rate the
  # earlier 3-seed sweep chose on dev (LoRA 1e-3, ρ 0.9 3e-3) is finished first.
  for piece in 0:1e-3 0.9:3e-3 0:3e-3 0.9:1e-3; do
    timed "sweep-${piece/:/-lr}" "${sweep[@]}" --inhibition "${piece%:*}" --learning_rate "${piece#*:}"
  done
  # the whole grid once more: every run is finished, so this only writes results.md/.csv/.png
  timed sweep-summary "${sweep[@]}" --inhibition 0,0.9 --learning_rate 1e-3,3e-3
  .venv/bin/python scripts/sweep_paired.py "$out/sweep-rho09" --pair 0.9@0.003:0@0.001 >"$logs/sweep-paired.log"
  cat "$out/sweep-rho09/paired.md"
fi
