#!/usr/bin/env bash
# Issue 35, items 4 and 5 with the reader (Qwen2.5-Coder-0.5B-Instruct), in one prepared run: for a machine with the
# time (about 28 h on a 2-core CPU with native bf16, docs/benchmarks.md "What the reader costs on a CPU") or a GPU.
#
#   bash bench/reader_rows.sh                 # everything not done yet, in order; rerun it to resume
#   SEEDS="0" bash bench/reader_rows.sh       # one seed of the trained generator rows
#   RPO_RETRIEVER=runs/rpo-table/work/rpo-reader-f1/retriever bash bench/reader_rows.sh   # BPO-RAG on that Stage 1
#
# Every step writes per-question files (the Stage-1 rows in runs/rpo-table/, copied to bench/results/reader_stage1/ at
# the end; the +RPO answers in bench/results/reader/; the generator rows in bench/results/reader_rows/) and is skipped
# when its files exist; the work folders (pairs, adapters) are reused by the bench scripts themselves. Tables last.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${SEEDS:-0 1 2}"
RPO_RETRIEVER="${RPO_RETRIEVER:-runs/readme/retriever-rpo}"
READER=(--generator reader --judge_passage_tokens 256)
done_if() { for f in "$@"; do [ -f "$f" ] || return 1; done; echo "skip: $* exist"; }

# The README's Stage 1 (answer containment, listwise, reference-free): the retriever of the rpo and bporag rows.
if [ ! -f runs/readme/retriever-rpo/modules.json ]; then
    trl-bporag build-rpo-pairs --dataset ../shared/data/squad-dev --split train --max_queries 1500 \
        --output_dir runs/readme/rpo-pairs
    trl-bporag rpo --dataset_name runs/readme/rpo-pairs --output_dir runs/readme/retriever-rpo
fi

# Item 4: Stage 1 judged by the reader against answer containment, MNRL-answers and REPLUG-LSR from the reader, on
# the same 1,500 training questions; retrieval on the full test splits.
done_if runs/rpo-table/base.json || python bench/rpo_table.py --row base
done_if runs/rpo-table/rpo-answer-hit.json || \
    python bench/rpo_table.py --row rpo --name rpo-answer-hit --pairing listwise --reference free
# The reader's judge takes hours: its progress travels between machines as a committed file of ids and scores
# (bench/judge_progress.py), restored before the build and exported again whenever this script stops.
JUDGED=bench/results/reader_stage1/rpo-reader-f1-judged.jsonl.gz
JUDGE_PAIRS=runs/rpo-table/work/rpo-reader-f1/pairs
if [ ! -f runs/rpo-table/rpo-reader-f1.json ]; then
    [ -f "$JUDGED" ] && python bench/judge_progress.py restore "$JUDGED" "$JUDGE_PAIRS"
    export_judged() {
        [ -f "$JUDGE_PAIRS/shards/config.json" ] && python bench/judge_progress.py export "$JUDGE_PAIRS" "$JUDGED"
    }
    trap export_judged EXIT
    python bench/rpo_table.py --row rpo --name rpo-reader-f1 --pairing listwise --reference free \
        --judge generator_f1 "${READER[@]}" --resume_pairs
fi
done_if runs/rpo-table/mnrl-answers.json || python bench/rpo_table.py --row mnrl-answers
done_if runs/rpo-table/lsr.json || python bench/rpo_table.py --row lsr "${READER[@]}"
# ... and the +RPO row's answers: the reader under each of those retrievers.
for r in rpo-answer-hit rpo-reader-f1 mnrl-answers lsr; do
    name="rpo-${r#rpo-}"
    done_if "bench/results/reader/${name}@reader-squad-dev.json" "bench/results/reader/${name}@reader-hotpotqa-distractor.json" ||
        python bench/headroom.py --generator reader --row rpo --name "$name" --retriever "runs/rpo-table/work/$r/retriever"
done

# Item 5: the four rows and their anchors with the reader, the trained ones over $SEEDS.
for row in vanilla oracle rpo; do
    done_if "bench/results/reader_rows/${row}-squad-dev.json" "bench/results/reader_rows/${row}-hotpotqa-distractor.json" ||
        python bench/gpo_table.py --generator reader --row "$row" --rpo_retriever "$RPO_RETRIEVER"
done
for seed in $SEEDS; do
    for row in sft-gold gpo bporag simple; do
        done_if "bench/results/reader_rows/${row}-s${seed}-squad-dev.json" \
                "bench/results/reader_rows/${row}-s${seed}-hotpotqa-distractor.json" ||
            python bench/gpo_table.py --generator reader --row "$row" --seed "$seed" --rpo_retriever "$RPO_RETRIEVER"
    done
done

mkdir -p bench/results/reader_stage1
cp runs/rpo-table/{base,rpo-answer-hit,rpo-reader-f1,mnrl-answers,lsr}.json bench/results/reader_stage1/
python bench/rpo_table.py --table --compare rpo-reader-f1:rpo-answer-hit,rpo-reader-f1:mnrl-answers,rpo-reader-f1:lsr
python bench/headroom.py --table
python bench/gpo_table.py --generator reader --table
