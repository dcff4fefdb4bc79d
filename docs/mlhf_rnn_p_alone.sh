#!/usr/bin/env bash
# RNN_p trained alone (--opt train=p: RNN_s held at its start, s ≈ 0.69), and one
# run with both meta-nets trained, on cnn-small, b_mt = 128, T = 10, n = 4, seed 0,
# float32, mnist5k's meta split; then every file's RNN_p is scored on the 27 fixed
# solves of docs/mlhf_probe.md section 4 (float64, s = 0.6932):
#
#     bash docs/mlhf_rnn_p_alone.sh            # about 3 h on one core
#
# Each meta-training is a chain of runs, the later ones with --resume (the replay
# buffer and the target net under way start afresh at a resume, so a chain is not
# bit for bit an uninterrupted run of the same length).  The snapshots the table
# scores are copies of the file at the end of a link of the chain.
# Writes docs/mlhf_rnn_p_*.h5 (+ .jsonl logs), docs/mlhf_rnn_p_alone.md and
# docs/mlhf_rnn_p_own_damping.md.
set -eu
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
base=(hfmeta -q --seed 0 meta-train -m mlhf --model cnn-small -b 128)
work=$(mktemp -d)

chain() {   # chain NAME TRAIN META_LR INPUTS HIDDEN "N1 EVAL1" "N2 EVAL2" ... (snapshot after each)
    local name=$1 train=$2 lr=$3 inputs=$4 hidden=$5 total=0 first=1
    shift 5
    for link in "$@"; do
        set -- $link
        "${base[@]}" -n "$1" --eval-every "$2" --opt train="$train" --opt meta_lr="$lr" \
            --opt inputs="$inputs" --opt hidden="$hidden" $([ $first = 1 ] || echo --resume) \
            --out "$work/$name.h5"
        first=0 total=$((total + $1))
        cp "$work/$name.h5" "docs/mlhf_rnn_p_${name}_$total.h5"
        cp "$work/$name.jsonl" "docs/mlhf_rnn_p_${name}_$total.jsonl"
    done
}

chain tanh p 0.01 tanh "[4,4]" "200 50" "400 200"
chain logsign p 0.01 logsign "[4,4]" "200 50" "400 100" "1800 600"
chain logsign_lr0.03 p 0.03 logsign "[4,4]" "600 100" "900 300"
chain logsign_h16_lr0.03 p 0.03 logsign "[16,16]" "600 100"
chain logsign_both sp 0.01 logsign "[4,4]" "600 100"      # RNN_s trained too

python docs/mlhf_rule_probe.py --starts 3 --skip-rules \
    $(for f in tanh_200 tanh_600 logsign_200 logsign_600 logsign_2400 logsign_lr0.03_1500 \
               logsign_h16_lr0.03_600 logsign_both_600; do echo --meta docs/mlhf_rnn_p_$f.h5; done) \
    --meta hfmeta/meta/shipped/mlhf_paper.h5 --out docs/mlhf_rnn_p_alone.md
# the jointly trained RNN_p again, now at the damping of the RNN_s it was trained beside,
# with the Jacobi preconditioner, P = s and one fitted P scale per kind at that damping
python docs/mlhf_rule_probe.py --starts 3 --skip-rules --jacobi --kind-scales \
    --damping-from docs/mlhf_rnn_p_logsign_both_600.h5 \
    --meta docs/mlhf_rnn_p_logsign_both_600.h5 --out docs/mlhf_rnn_p_own_damping.md
rm -rf "$work"
