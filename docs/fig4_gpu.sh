#!/usr/bin/env bash
# Figure 4 (the RNN_p ablation) on the paper's model, convnet, with ten times
# the meta-iterations of docs/results.md section 3, on a GPU (CuPy):
#
#     OUT=fig4-gpu bash docs/fig4_gpu.sh [SECONDS]
#
# Four meta-trainings run side by side on one GPU (b_mt = 64, T = 10, meta lr
# 0.01, seed 0, float32, mnist5k's meta split), each with a held-out
# evaluation every 25 meta-iterations ('validation' lines in its .jsonl: the
# same fixed held-out unrolls for every configuration and evaluation):
#   config1   no RNN_p, n = 20
#   config2   no RNN_p, n = 4
#   config4   RNN_p, n = 4 (the default)
#   config4p  RNN_p, n = 4, only RNN_p trained (RNN_s stays at its start), so
#             any move of its held-out l_p is RNN_p's doing
# Each run stops after SECONDS (default 420) if it has not finished; its log
# keeps every validation line written so far, the one before meta-training
# first.  Logs: $OUT/*.jsonl, $OUT/log.txt; copy the .jsonl files to
# docs/fig4_gpu/ and run `python docs/fig4_gpu.py` for docs/fig4_gpu.md.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-fig4-gpu}
limit=${1:-420}
mkdir -p "$out" /tmp/fig4
rm -f /tmp/fig4/*.h5             # meta-train does not overwrite a file it did not make
PY=$(command -v python3 || command -v python)
python_path_ok=$("$PY" -c "import hfmeta.cli" 2>/dev/null && echo yes)
if [ -z "$python_path_ok" ]; then
    ln -sfn ../cli hfmeta/cli; ln -sfn ../datasets hfmeta/datasets
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
common=(--device gpu -q --seed 0 meta-train -m mlhf --model convnet --data mnist5k -b 64
        --opt T=10 --opt meta_lr=0.01 --eval-every 25 --save-every 25)
run() {  # name iterations options...
    local name=$1 iterations=$2; shift 2
    timeout "$limit" "$PY" -m hfmeta.cli "${common[@]}" -n "$iterations" "$@" \
        --out "/tmp/fig4/$name.h5" > "/tmp/fig4/$name.txt" 2>&1
    echo "$name: exit $?" >> "$out/log.txt"
    cp "/tmp/fig4/$name.jsonl" "$out/$name.jsonl"
}
run config1 100 --opt use_rnn_p=false --opt n=20 &
run config2 250 --opt use_rnn_p=false --opt n=4 &
run config4 250 --opt n=4 &
run config4p 250 --opt n=4 --opt train=p &
wait
for name in config1 config2 config4 config4p; do
    { echo "== $name"; cat "/tmp/fig4/$name.txt"; } >> "$out/log.txt"
done
