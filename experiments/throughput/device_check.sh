#!/usr/bin/env bash
# Accelerator figures in one short run: the DPO train step of a 1.1B LLaMA-style model in
# bfloat16 (einsum attention, then jax.nn.dot_product_attention), and the KV-cache sampler on
# the same model, from one model and from the beta = 0.5 mixture. Each prints tokens/s, model
# FLOPs utilisation against the matmul peak it measures on the device, and peak device memory.
#
#   bash experiments/throughput/device_check.sh          # JSON lines and tables; OUT=DIR keeps them
#
# Written for one H100/H200 and not yet run there, so its run time is untested. Needs jax with its GPU plugin,
# flax, optax and ml_collections; wheels placed in .whl/ are installed first (for a machine
# without network access).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/align-site .whl/*.whl
  export PYTHONPATH=/tmp/align-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
python3 -c "import jax; print(jax.devices())"
for attention in einsum dot_product_attention; do
  python3 experiments/throughput/run.py --sizes 1b --objective dpo --dtype bfloat16 \
    --batch 8 --seq 1024 --steps 5 --attention "$attention" --out "$OUT/dpo_1b_$attention.json"
done
python3 experiments/throughput/sampler.py --sizes 1b --dtype bfloat16 --batch 64 \
  --prompt_len 128 --new_tokens 256 --repeats 2 --out "$OUT/sampler_1b.json"
