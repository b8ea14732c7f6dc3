#!/usr/bin/env bash
# The AR demo end to end on the embedded digits (configs/demo_ar.py): tokenizer -> codes -> GPT ->
# class-conditional samples. Usage: bash launch/demo_ar.sh [DIR] [extra --config.* flags for the GPT]
set -euo pipefail
DIR="${1:-/tmp/gigatok_demo_ar}"
shift || true
cd "$(dirname "$0")/.."
run() { python -m gigatok_jax.main "$@"; }
GPT=(--config=configs/demo_ar.py --workdir="$DIR/gpt" --config.tokenizer.workdir="$DIR/tokenizer")

echo "== 1/4 tokenizer on the digits"
run --config=configs/demo_ar.py:tokenizer --workdir="$DIR/tokenizer"
echo "== 2/4 codes of the train and eval digits"
run "${GPT[@]}" --mode=extract_codes
run "${GPT[@]}" --mode=extract_codes --config.extract.split=eval
echo "== 3/4 GPT on the codes"
run "${GPT[@]}" --config.data.codes_path="$DIR/gpt/codes/train" \
    --config.data.eval_codes_path="$DIR/gpt/codes/eval" "$@"
echo "== 4/4 samples, one row per digit"
run "${GPT[@]}" --mode=sample "$@"
