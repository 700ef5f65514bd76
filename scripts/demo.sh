#!/usr/bin/env bash
# The main job on the embedded default (digits + china patches), about a minute on 2 CPU cores:
# pretrain -> evaluate the pretrained model -> energy fine-tune -> evaluate the fine-tuned model (with pictures),
# then compare the two with `energy-ood report`. Everything lands in outputs/demo/<date>_<time>/.
set -euo pipefail
demo="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
if [ -e "$demo" ]; then demo="${demo}_$$"; fi
echo "== energy-ood demo -> $demo"
energy-ood train    progress=false "hydra.run.dir=$demo/train"
energy-ood eval     progress=false "ckpt=$demo/train/checkpoint.pt" "hydra.run.dir=$demo/eval_pretrained"
energy-ood finetune progress=false "ckpt=$demo/train/checkpoint.pt" "hydra.run.dir=$demo/finetune"
energy-ood eval     progress=false "ckpt=$demo/finetune/checkpoint.pt" plots=true "hydra.run.dir=$demo/eval_finetuned"
echo
echo "== pretrained (stage pretrain) vs energy fine-tuned (stage energy)"
energy-ood report "$demo" "hydra.run.dir=$demo/report"
