#!/usr/bin/env bash
# `make gpu-check OUT_DIR=<dir>`: the GPU figures of the suite in one go, on a CUDA machine whose Python already
# has torch (no venv is built and nothing is downloaded):
#   1. the CUDA-marked tests (pytest -m gpu: 224 px fp16 / bf16 training steps of every CNN detector, ...);
#   2. make bench-gpu at 224 px for every CNN detector (bare step, fit from files and from the cache, memory,
#      finiteness per precision);
#   3. one epoch of each of the four demo detectors with trainer=gpu, end to end (MLflow, diagnostics,
#      calibration), and the report of those runs.
# Every figure and log goes to OUT_DIR (at most 8 files). Packages the machine lacks are installed from a
# wheelhouse (`make wheelhouse`, default .whl/) into a scratch folder first. Each step has its own time limit
# (seconds, STEP_LIMITS="tests bench demo"), so the whole check ends in about 9 minutes at most.
set -uo pipefail
out=${1:-reports/gpu_check}
wheelhouse=${WHEELHOUSE:-.whl}
read -r limit_tests limit_bench limit_demo <<<"${STEP_LIMITS:-150 270 150}"
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SUITE_ROOT=$PWD
if compgen -G "$wheelhouse/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheelhouse"/*.whl || { echo "installing $wheelhouse failed" | tee "$out/summary.md"; exit 2; }
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  date -u +"%Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$py" -c 'import torch, lightning, timm; print("torch", torch.__version__, "cuda", torch.version.cuda,
"lightning", lightning.__version__, "timm", timm.__version__, "gpu", torch.cuda.is_available())'
  nproc
} >"$out/env.txt" 2>&1
status=()
step() {  # step <name> <limit s> <log> <command...>: run it with its limit, keep its exit code
  local name=$1 limit=$2 log=$3; shift 3
  local start=$SECONDS
  timeout --signal=TERM --kill-after=20 "$limit" "$@" >"$out/$log" 2>&1
  local rc=$?
  status+=("| $name | $rc | $((SECONDS - start)) s | $log |")
}
step "pytest -m gpu" "$limit_tests" pytest_gpu.log "$py" -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests
step "bench-gpu 224 px" "$limit_bench" bench_gpu.log "$py" -m experiments.bench.gpu --out "$out"
demo_runs="'$py' -m experiments.data.demo --out data/demo &&
  '$py' run.py -m experiment=demo trainer=gpu trainer.max_epochs=1 logger.experiment_name=gpu_check \
    model=resnet34_localfft,spectraforge_dual,efficientnet_spatial,radial_angular_logreg &&
  '$py' run.py task=report experiment=demo logger.experiment_name=gpu_check"
step "demo, trainer=gpu, 1 epoch" "$limit_demo" demo_gpu.log bash -c "$demo_runs"
{
  echo "# GPU check"; echo; sed 's/^/    /' "$out/env.txt"; echo
  echo "| step | exit | time | log |"; echo "|---|---:|---:|---|"; printf '%s\n' "${status[@]}"
} >"$out/summary.md"
cat "$out/summary.md"
