#!/usr/bin/env bash
# Figure 4 (the RNN_p ablation) with 30 times the meta-iterations of docs/results.md
# section 3: the four configurations, 600 meta-iterations each, on cnn-small,
# b_mt = 128, T = 10, meta lr 0.01, L2L's log/sign inputs, both meta-nets trained,
# float32, mnist5k's meta split, a held-out evaluation every 100:
#
#     bash docs/mlhf_fig4_long.sh                        # seed 0: about 1.2 h on two cores
#     bash docs/mlhf_fig4_long.sh 1 config1,config2,config4   # seed 1, three of the four
#
# config1 (the slow one, n = 20) runs beside the others, which run one after another.
# Configuration (4) of seed 0 is the command of docs/mlhf_rnn_p_logsign_both_600.h5.
# Writes docs/mlhf_fig4_long[_seedS]_configK.h5 (+ .jsonl logs), then scores them at
# common states (docs/mlhf_fig4_long.py) into docs/mlhf_fig4_long[_seedS].md.
set -eu
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
seed=${1:-0}
configs=${2:-config1,config2,config3,config4}
out=docs/mlhf_fig4_long
[ "$seed" = 0 ] || out=${out}_seed$seed
base=(hfmeta -q --seed "$seed" meta-train -m mlhf --model cnn-small -b 128 -n 600
      --eval-every 100 --opt train=sp --opt meta_lr=0.01 --opt inputs=logsign
      --opt hidden="[4,4]" --force)
train() {   # train configK
    case $1 in
        config1) "${base[@]}" --opt use_rnn_p=false --opt n=20 --out ${out}_config1.h5 ;;
        config2) "${base[@]}" --opt use_rnn_p=false --opt n=4 --out ${out}_config2.h5 ;;
        config3) "${base[@]}" --opt n=2 --out ${out}_config3.h5 ;;
        config4) "${base[@]}" --out ${out}_config4.h5 ;;
        *) echo "unknown configuration $1" >&2; return 1 ;;
    esac
}
pids=()
case ,$configs, in *,config1,*) train config1 & pids+=($!) ;; esac
{ for c in ${configs//,/ }; do [ "$c" = config1 ] || train "$c"; done; } & pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done    # each fails the script if it failed
python docs/mlhf_fig4_long.py --starts 3 --seed "$seed" --configs "$configs" \
    --files "${out}_{}.h5" --out ${out}.md
