#!/usr/bin/env bash
# Figure 4 (the RNN_p ablation) with 30 times the meta-iterations of docs/results.md
# section 3: the four configurations, 600 meta-iterations each, on cnn-small,
# b_mt = 128, T = 10, meta lr 0.01, L2L's log/sign inputs, both meta-nets trained,
# seed 0, float32, mnist5k's meta split, a held-out evaluation every 100:
#
#     bash docs/mlhf_fig4_long.sh        # about 2.5 h on two cores (config1 alone 1.2 h)
#
# Configuration (4) is the command of docs/mlhf_rnn_p_logsign_both_600.h5.  Writes
# docs/mlhf_fig4_long_config{1,2,3,4}.h5 (+ .jsonl logs), then scores them at common
# states (docs/mlhf_fig4_long.py) into docs/mlhf_fig4_long.md.
set -eu
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
base=(hfmeta -q --seed 0 meta-train -m mlhf --model cnn-small -b 128 -n 600 --eval-every 100
      --opt train=sp --opt meta_lr=0.01 --opt inputs=logsign --opt hidden="[4,4]" --force)
out=docs/mlhf_fig4_long
"${base[@]}" --opt use_rnn_p=false --opt n=20 --out ${out}_config1.h5 &
first=$!
{ "${base[@]}" --opt use_rnn_p=false --opt n=4 --out ${out}_config2.h5
  "${base[@]}" --opt n=2 --out ${out}_config3.h5
  "${base[@]}" --out ${out}_config4.h5; } &
wait $first && wait $!           # each fails the script if its meta-training failed
python docs/mlhf_fig4_long.py --starts 3 --out ${out}.md
