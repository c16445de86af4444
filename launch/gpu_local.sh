#!/usr/bin/env bash
# Runs research.main on this machine's GPU(s): the local counterpart of launch/tpu_run.sh.
#
# Usage: launch/gpu_local.sh --config=experiments/NAME.py[:ARG=V,...] --workdir=DIR [MORE_ARGS...]
#
# JAX needs its CUDA build for the GPU:  pip install -U "jax[cuda12]"  (then pip install -e .)
# Sets, unless already set: XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 (share of GPU memory JAX
# preallocates), TF_CPP_MIN_LOG_LEVEL=3 (quiet TensorFlow/XLA C++ logs). CUDA_VISIBLE_DEVICES
# is passed through (e.g. CUDA_VISIBLE_DEVICES=0,1 to pick GPUs). Runs from the current
# directory with this repo on PYTHONPATH, so relative config and workdir paths mean what they
# say. PYTHON picks the interpreter (default: python). DRY_RUN=1 prints the command.
#
# Example: launch/gpu_local.sh --config=experiments/vae_mnist.py:runlocal --workdir=workdirs/vae
set -euo pipefail
case ${1:-} in
  -h | --help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
  "") echo "error: no arguments for research.main" >&2
      grep -m1 '^# Usage:' "$0" | sed 's/^# //' >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n ${CUDA_VISIBLE_DEVICES+x} ]]; then export CUDA_VISIBLE_DEVICES; fi
cmd=("${PYTHON:-python}" -m research.main "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
