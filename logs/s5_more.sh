#!/bin/bash
# Session 5, second batch: the soup of the two mixed fine-tunes, then one more seed of each recipe (in parallel).
cd /work/main && source .venv/bin/activate
R=train/runs/regressor
python train/ensemble.py --cache cache/gpu/crops_noseg256.npz --average-weights \
  --members $R/relu_sex_enh_noseg_pre_mix8_s0 $R/relu_sex_enh_noseg_pre_mix8_s1 --run-dir $R/soup_mix8 > logs/soup_mix8.log 2>&1
d=$R/relu_sex_enh_noseg_pre_mix8_s2; mkdir -p $d
python -m edgeba.training.regressor --cache cache/gpu/crops_noseg256.npz --run-dir $d \
    --no-segment --epochs 10 --lr 2e-4 --patience 10 --init-from $R/pre_lowres128/regressor.keras \
    --warmup-epochs 1 --mix-cache cache/gpu/crops_lowres256_unsquash.npz --mix-per-batch 8 --seed 2 --workers 1 > $d/train.log 2>&1 &
d=$R/relu_sex_enh_noseg_pre_s1; mkdir -p $d
python -m edgeba.training.regressor --cache cache/gpu/crops_noseg256.npz --run-dir $d \
    --no-segment --epochs 10 --lr 2e-4 --patience 10 --init-from $R/pre_lowres128/regressor.keras --seed 1 --workers 1 > $d/train.log 2>&1 &
wait
