#!/usr/bin/env bash
# The GPU benchmarks of one lent device session (15 minutes of device time, all tries
# together), in order of value, each under its own time cap, so that one slow or failing
# step never costs the others. Results are written as the benchmarks always write them
# (runs/bench/*.json, resumable cells under runs/bench/recipe/) and packed into
# $OUT/results.tar.gz with the log; copy them into bench/results/<date>-<gpu>/.
# The tarball also holds every cell's result file: a run of the same benchmark here with
# `--results <unpacked>/runs/bench/recipe/results` reads them back without training, and
# so fills the per-cell metrics that paired comparisons need (vtfusion.stats).
#
# Prepare on the workstation (the device machine reaches no network and gets at most
# 64 MiB of files; ../shared does not travel):
#   bench/resize_real_ad.py --out .gpu/real_ad --check     # real_ad at 240 px: same tensors
#   pip download open_clip_torch==3.3.0 ftfy wcwidth==0.2.13 into .whl (see .library device README)
# Run there from the repository root, carrying .gpu and .whl:
#   bash bench/gpu_session.sh
set -u
OUT=${OUT:-runs/gpu_session}
PY=${PY:-python3}
mkdir -p "$OUT" runs/bench
log=$OUT/log.txt
export PYTHONUNBUFFERED=1 VTFUSION_REAL_AD=${VTFUSION_REAL_AD:-$PWD/.gpu/real_ad}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

step() {  # step CAP_SECONDS COMMAND...: run, log, never stop the session
  local cap=$1; shift
  echo "== $(date +%T) [cap ${cap}s] $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$cap" "$@" >>"$log" 2>&1
  echo "== rc $? after $((SECONDS - t0)) s" | tee -a "$log"
}

step 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
step 20 $PY -c "import torch, open_clip, numpy; print(torch.__version__, open_clip.__version__, numpy.__version__, torch.cuda.get_device_name())"
step 60 $PY -m vtfusion.data.toy --ensure
step 90 $PY -m pytest -q -p no:cacheprovider -o addopts= tests/test_metrics.py tests/test_das.py tests/test_train.py tests/test_resample.py -k "cuda or resample"
for precision in fp32 bf16; do
  step 45 $PY bench/bench_forward.py --device cuda --precision $precision --batch 32 --warmup 2 --repeats 5 \
    --out runs/bench/forward_$precision.json
done
step 300 $PY bench/bench_recipe.py --parts real --real-seeds 0 1 2 --threads 8 --out runs/bench/recipe_real.json
step 90 $PY bench/bench_precision.py --backbone vitb_random --device cuda --threads 8
step 60 $PY bench/cuda_determinism.py --device cuda --iterations 50
step 45 $PY bench/bench_train.py --device cuda --warmup 3 --measure 20
tar czf "$OUT/results.tar.gz" runs/bench/*.json runs/bench/recipe/results 2>>"$log"
echo "== done $(date +%T)" | tee -a "$log"
