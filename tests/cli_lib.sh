# Shared by the command-line tests: source it with the sparsemoe binary as $1. It sets bin, fail=0
# and a scratch directory tmp (removed on exit), and writes there a small synthetic
# label<TAB>text corpus (corpus.tsv) and a tiny training config on it (config.json).
set -u
bin=$1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 400 sentences: a label's own words mixed with shared fillers.
words=("lion tiger wolf eagle shark horse" "hammer saw drill wrench chisel pliers"
       "bread apple cheese soup rice honey")
labels=(animal tool food)
filler=(the a big small old with)
for ((i = 0; i < 400; i++)); do
  l=$(((i * 7 + i / 3) % 3))
  read -ra own <<< "${words[$l]}"
  line="${labels[$l]}"$'\t'
  for ((w = 0; w < 4 + i % 5; w++)); do
    if (((i + w) % 2)); then line+="${own[$(((i * 3 + w * 5) % 6))]} "; else line+="${filler[$(((i + w * 7) % 6))]} "; fi
  done
  echo "$line"
done > "$tmp/corpus.tsv"

cat > "$tmp/config.json" <<JSON
{"model": {"hidden_size": 16, "num_layers": 3, "moe_layers": [1], "attention_layers": [2],
           "moe": {"experts": {"num_experts": 4},
                   "router": {"load_balancing_loss_weight": 0.01, "router_z_loss_weight": 1e-4}},
           "num_attention_heads": 2, "max_sequence_length": 12,
           "type_vocab_size": 2, "inner_dim": 32},
 "data": {"format": "tsv", "path": "$tmp/corpus.tsv"},
 "tokenizer": {"vocab_size": 60}, "batch_size": 8,
 "pretrain": {"steps": 150, "optimizer": {"learning_rate": 0.003, "warmup_steps": 10}},
 "finetune": {"steps": 150, "optimizer": {"learning_rate": 0.01, "warmup_steps": 10}},
 "log_every": 1, "eval_every": 50, "eval_batches": 2, "checkpoint_every": 100}
JSON


# Runs "$bin" with the arguments and requires exit status 2 and one stderr line holding want.
expect_error() {  # want-substring, args...
  local want=$1; shift
  local err
  err=$("$bin" "$@" 2>&1 >/dev/null)
  local status=$?
  [[ $status -eq 2 ]] || { echo "FAIL: '$*' exit status $status (want 2)"; fail=1; }
  [[ "$err" == *"$want"* && $(echo "$err" | wc -l) -eq 1 ]] || { echo "FAIL: '$*' said: $err"; fail=1; }
}
