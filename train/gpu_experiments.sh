#!/usr/bin/env bash
# All regressor experiments of one GPU lease, in parallel on one GPU, with Keras on JAX.
# Run from the repo root on the device machine, carrying .whl (keras, namex, optree wheels for
# Python 3.12) and cache/gpu (crop caches built by `python -m edgeba.training.crops`).
# Each run stops after $BUDGET seconds of training, then evaluates and is packed into $OUT/<name>.tgz.
set -u
PY=${PY:-python3}
if [ -z "${SKIP_WHEELS:-}" ]; then  # SKIP_WHEELS=1 PY=... for a local dry run where Keras is installed
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu-out}
BUDGET=${BUDGET:-360}
EPOCHS=${EPOCHS:-150}
mkdir -p "$OUT" runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"

run() {
  local name=$1; shift
  $PY -m edgeba.training.regressor --run-dir "runs/$name" --time-budget "$BUDGET" --epochs "$EPOCHS" \
    --patience 40 --workers 3 "$@" > "runs/$name.log" 2>&1
  echo "$name exit $?"
  tar czf "$OUT/$name.tgz" runs/$name.log $(ls runs/$name/{regressor.keras,config.json,history.csv,metrics.json,predictions_*.csv} 2>/dev/null)
}
SEG=cache/gpu/crops_seg256.npz
run relu_sex_enh_seg   --cache $SEG --variant relu &
run relu_sex_enh_seg_s1 --cache $SEG --variant relu --seed 1 &
run thesis_sex_enh_seg --cache $SEG --variant thesis &
run relu_sex_noenh_seg --cache $SEG --variant relu --no-enhance &
run relu_nosex_enh_seg --cache $SEG --variant relu --no-sex &
run relu_sex_enh_noseg --cache cache/gpu/crops_noseg256.npz --variant relu --no-segment &
[ -f cache/gpu/crops_seg192.npz ] && run relu_sex_enh_seg192 --cache cache/gpu/crops_seg192.npz --variant relu --size 192 &
wait
tail -n 3 runs/*.log
ls -la "$OUT"
