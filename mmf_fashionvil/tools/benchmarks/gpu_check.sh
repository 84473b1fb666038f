#!/usr/bin/env bash
# The GPU check of issue 12, on one machine with N >= 1 GPUs, from the repository root:
#
#   bash mmf_fashionvil/tools/benchmarks/gpu_check.sh [OUT]          # paper size, 224 px, bf16
#   bash mmf_fashionvil/tools/benchmarks/gpu_check.sh --smoke [OUT]  # tiny sizes (CPU works too)
#
# 1. the synthetic catalog at 224 px (64 px with --smoke), its attributes, a tokenizer;
# 2. 200 updates of the six-task pre-training (paper architecture, random init, bf16),
#    killed (SIGKILL) after the checkpoint of update 100 and resumed with checkpoint.resume;
# 3. run_type=test of the saved model;
# 4. the throughput benchmark (--device cuda);
# 5. with N > 1 GPUs: the same pre-training for 20 updates under torchrun --nproc_per_node=N.
# It prints one table: step, status, wall time, and the figure that step is about.
set -uo pipefail
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT=${1:-bench_out/gpu_check}
PY=${PYTHON:-.venv/bin/python}
MMF_RUN=$(dirname "$PY")/mmf_run
TORCHRUN=$(dirname "$PY")/torchrun
export PYTHONPATH=${PYTHONPATH:-$PWD}
mkdir -p "$OUT"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")

if [ $SMOKE = 1 ]; then
  SIZE=64; UPDATES=20; KILL_AT=10; BATCH=8
  MODEL=(config=projects/fashionvil/configs/pretraining/final_tiny.yaml)
  BENCH=(--size smoke --rounds 1 --eval-sizes 1024)
  [ "$GPUS" -gt 0 ] && BENCH+=(--device cuda)
else
  SIZE=224; UPDATES=200; KILL_AT=100; BATCH=64
  M=model_config.fashionvil
  MODEL=(config=projects/fashionvil/configs/pretraining/final_tiny.yaml
         $M.image_encoder.arch=resnet50 $M.image_encoder.image_size=224
         $M.bert.vocab_file=null $M.bert.vocab_size=30522 $M.bert.hidden_size=768
         $M.bert.num_hidden_layers=12 $M.bert.num_attention_heads=12
         $M.bert.intermediate_size=3072 $M.bert.max_position_embeddings=512
         $M.embedding_dim=256
         dataset_config.fashion_pretraining.processors.train_image_processor.params.resize=256
         dataset_config.fashion_pretraining.processors.train_image_processor.params.crop=224
         dataset_config.fashion_pretraining.processors.eval_image_processor.params.resize=224
         dataset_config.fashion_pretraining.processors.eval_image_processor.params.crop=224
         training.amp.enabled=true training.amp.dtype=bf16 training.device=cuda)
  BENCH=(--device cuda --size paper)
fi

ROWS=()
row() { ROWS+=("| $1 | $2 | $3 s | $4 |"); }
timed() { local start=$SECONDS; "$@"; local rc=$?; ELAPSED=$((SECONDS - start)); return $rc; }
last_log() { "$PY" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(r[-1]['$2'] if r else 'none')" "$1" 2>/dev/null || echo none; }

# 1. inputs
CATALOG=$OUT/catalog
timed "$PY" - "$CATALOG" "$SIZE" <<'EOF'
import os, sys
import torch
from omegaconf import OmegaConf
from mmf_fashionvil.tools.synthetic import generate_catalog
from mmf_fashionvil.tools.attributes import lexicon_tagger, load_lexicon, mine_attributes
from mmf_fashionvil.tools.benchmarks.throughput import random_image_tokenizer
catalog, size = sys.argv[1], int(sys.argv[2])
if not os.path.isdir(catalog):
    generate_catalog(catalog, seed=0, num_products=600, image_size=size)
lexicon = load_lexicon(os.path.join(catalog, "vocab", "pos_lexicon.json"))
mine_attributes(catalog, os.path.join(catalog, "attributes"), min_count=20,
                tag_fn=lexicon_tagger(lexicon), tagger_name="lexicon")
os.replace(random_image_tokenizer(os.path.dirname(catalog), size),
           os.path.join(os.path.dirname(catalog), "tokenizer.ckpt"))
EOF
row "catalog ($SIZE px), attributes, tokenizer" "rc $?" "$ELAPSED" "$CATALOG"

COMMON=(model=fashionvil dataset=fashion_pretraining env.data_dir=$CATALOG
        model_config.fashionvil.heads.mpfc.tokenizer_checkpoint=$OUT/tokenizer.ckpt
        training.batch_size=$BATCH training.max_updates=$UPDATES training.log_interval=10
        training.checkpoint_interval=$KILL_AT training.evaluation_interval=$UPDATES
        scheduler.params.num_training_steps=$UPDATES scheduler.params.num_warmup_steps=10
        "${MODEL[@]}")

# 2. pre-training, killed after the checkpoint of update KILL_AT, then resumed
SAVE=$OUT/pretrain
rm -rf "$SAVE"; mkdir -p "$SAVE"
start=$SECONDS
"$MMF_RUN" "${COMMON[@]}" env.save_dir=$SAVE > "$SAVE/first.log" 2>&1 &
PID=$!
while kill -0 $PID 2>/dev/null && ! grep -q "Saved checkpoint at update $KILL_AT" "$SAVE/first.log"; do
  sleep 1
done
kill -9 $PID 2>/dev/null; wait $PID 2>/dev/null
row "pre-training, killed after update $KILL_AT" "killed" "$((SECONDS - start))" \
    "$(grep -o '[0-9.]* samples/s' "$SAVE/first.log" | tail -1 || true)"
timed "$MMF_RUN" "${COMMON[@]}" env.save_dir=$SAVE checkpoint.resume=true > "$SAVE/resume.log" 2>&1
row "resume to update $UPDATES" "rc $?" "$ELAPSED" \
    "last update $(last_log $SAVE/train_log.jsonl update), $(last_log $SAVE/train_log.jsonl samples_per_s) samples/s, peak $(last_log $SAVE/train_log.jsonl peak_memory_mb) MB"

# 3. evaluation of the saved model in its own process
timed "$MMF_RUN" "${COMMON[@]}" env.save_dir=$OUT/test run_type=test \
    checkpoint.resume_file=$SAVE/current.ckpt > "$OUT/test.log" 2>&1
row "run_type=test" "rc $?" "$ELAPSED" "$(grep -o 'general/r_mean [0-9.]*' "$OUT/test.log" | tail -1)"

# 4. throughput benchmark
timed "$PY" -m mmf_fashionvil.tools.benchmarks.throughput "${BENCH[@]}" --out "$OUT/throughput" \
    > "$OUT/throughput.log" 2>&1
row "throughput benchmark" "rc $?" "$ELAPSED" "table in $OUT/throughput.log"

# 5. several GPUs
if [ "$GPUS" -gt 1 ]; then
  timed "$TORCHRUN" --standalone --nproc_per_node="$GPUS" "$MMF_RUN" "${COMMON[@]}" \
      env.save_dir=$OUT/ddp training.max_updates=20 training.batch_size=$((BATCH * GPUS)) \
      > "$OUT/ddp.log" 2>&1
  row "torchrun --nproc_per_node=$GPUS, 20 updates" "rc $?" "$ELAPSED" \
      "$(last_log $OUT/ddp/train_log.jsonl samples_per_s) samples/s"
else
  row "torchrun" "skipped" "0" "$GPUS GPU(s)"
fi

echo
echo "| step | status | wall | figure |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
sed -n '/^Training step/,$p' "$OUT/throughput.log"
