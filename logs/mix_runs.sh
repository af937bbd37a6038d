#!/bin/bash
# Session 5: mixed fine-tune (8 of every 32 images from the unsquashed low-res cache at 256 px) + 1-epoch warm-up,
# from the same pre-trained weights as the shipped run; two seeds, judged by their mean on tune.
cd /work/main && source .venv/bin/activate
for seed in 0 1; do
  d=train/runs/regressor/relu_sex_enh_noseg_pre_mix8_s$seed; mkdir -p $d
  python -m edgeba.training.regressor --cache cache/gpu/crops_noseg256.npz --run-dir $d \
    --no-segment --epochs 10 --lr 2e-4 --patience 10 --init-from train/runs/regressor/pre_lowres128/regressor.keras \
    --warmup-epochs 1 --mix-cache cache/gpu/crops_lowres256_unsquash.npz --mix-per-batch 8 --seed $seed \
    > $d/train.log 2>&1
done
