#!/usr/bin/env bash
# Train a queue of runs on a lent GPU machine in one `device` call (docs/experiments.md, "Training on a GPU").
# Prepare here: ../shared/tools/device-pack tf_efficientnet_lite1 tf_efficientnet_lite2   (fills the ignored .device/)
# Then, with the device tool, carry [".device"] and run:   BUDGET=500 bash scripts/device-train.sh QUEUE_FILE
# QUEUE_FILE: one run per line, `NAME ENCODER TRAIN-FLAGS...`, e.g. `g448-lite2 tf_efficientnet_lite2 --preset
# accurate --val-fraction 0`. The runs train one after another on 14 loader workers; a run is skipped when the
# seconds left of BUDGET would not cover the previous one. Each finished run comes back as $OUT/NAME.tar: its model
# in fp16 (what bundling ships; fp32 is over the 16 MiB a returned file may have), model.json, config, metrics,
# split and log. Unpack here with `tar -C runs -xf NAME.tar`. LOCAL=1 PY=.venv/bin/python tries it on this machine.
# EVAL="--input-size 512 --tta" also scores each packed run on the real photos (copy them first: `cp -r
# ../shared/data/carparts/photos .device/data/carparts/`), metrics back as $OUT/NAME-photos.json: a first reading that
# picks the next queue inside one session; the figures for docs are re-measured here on the CPU.
set -u
queue=$1
[ -n "${LOCAL:-}" ] || source .device/env.sh
PY=${PY:-python3}; OUT=${OUT:-/tmp/out}; BUDGET=${BUDGET:-500}; EXTRA=${EXTRA:-}
mkdir -p "$OUT" /tmp/runs /tmp/pack
log() { echo "$(date +%T) $*" | tee -a "$OUT/log.txt"; }
t0=$(date +%s); last=150
log "$(nvidia-smi -L 2>/dev/null | head -1) $($PY -V 2>&1), $(nproc) cpus"
while read -r name enc flags; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  left=$(( BUDGET - ($(date +%s) - t0) ))
  if [ $left -lt $(( last * 105 / 100 + 10 )) ]; then log "skip $name: ${left}s left, the last run took ${last}s"; continue; fi
  s=$(date +%s)
  # shellcheck disable=SC2086  # flags are words
  $PY -m carparts train --quiet --data .device/data/carparts/trainingset --workers 14 --out /tmp/runs --name "$name" \
    --encoder "$enc" --encoder-weights ".device/$enc-imagenet-fp16.safetensors" $flags $EXTRA > "/tmp/$name.log" 2>&1 < /dev/null
  rc=$?; last=$(( $(date +%s) - s ))
  log "$name: rc $rc, ${last}s: --encoder $enc $flags"
  [ $rc = 0 ] || { tail -n 40 "/tmp/$name.log" >> "$OUT/log.txt"; continue; }
  $PY - "$name" <<'PY' 2>&1 | tail -n 3 | tee -a "$OUT/log.txt"
import json, shutil, sys
from pathlib import Path
from carparts.models import load_model, save_model
name = sys.argv[1]; run = Path("/tmp/runs") / name; pack = Path("/tmp/pack") / name
model, info = load_model(run)
info.recipe["data"] = "../shared/data/carparts/trainingset"  # the same images, where they are on the CPU machines
save_model(model, info, pack, fp16=True)
for f in ("config.yaml", "metrics.csv", "metrics.json", "split.json"):
    if (run / f).is_file():
        shutil.copy(run / f, pack / f)
PY
  cp "/tmp/$name.log" "/tmp/pack/$name/train.log"
  tar -C /tmp/pack -cf "$OUT/$name.tar" "$name" && log "packed $name: $(du -h "$OUT/$name.tar" | cut -f1)"
  if [ -n "${EVAL:-}" ]; then
    # shellcheck disable=SC2086  # EVAL is words
    $PY -m carparts evaluate --quiet --data .device/data/carparts/photos --model "/tmp/pack/$name" $EVAL \
      --out "/tmp/eval/$name" > "/tmp/$name-eval.log" 2>&1 < /dev/null
    cp "/tmp/eval/$name/metrics.json" "$OUT/$name-photos.json" 2>/dev/null
    log "$name photos ($EVAL): $(grep -m1 -o '"miou_parts": [0-9.]*' "/tmp/eval/$name/metrics.json" 2>/dev/null || tail -n 2 "/tmp/$name-eval.log")"
  fi
done < "$queue"
log "done in $(( $(date +%s) - t0 ))s"
