#!/usr/bin/env bash
# The GPU checks of the performance issue, end to end, in a few minutes on one GPU:
# se_resnet50 bf16 training (target >= 4,500 images/s on an H100 and >= 1.3x timm with
# channels_last + bf16 autocast + torch.compile), se_resnext101_32x4d bf16 training
# (target >= 1,700 images/s). Needs jax[cuda12] and, for the comparison, torch + timm.
#   bash scripts/gpu_checks.sh [OUT.jsonl]
set -euo pipefail
out=${1:-gpu_checks.jsonl}
: > "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
bench() { python -m senet_jax.benchmark "$@" --json | tail -n 1 | tee -a "$out"; }
bench --model se_resnet50 --mode train --dtype bfloat16 --batch-size 256 --steps 20 --rounds 3 --compare timm
bench --model resnet50 --mode train --dtype bfloat16 --batch-size 256 --steps 20 --rounds 3
bench --model se_resnext101_32x4d --mode train --dtype bfloat16 --batch-size 128 --steps 10 --rounds 3
bench --model se_resnet50 --mode infer --dtype bfloat16 --batch-size 256 --steps 20 --rounds 3 --compare timm
echo "results in $out"
