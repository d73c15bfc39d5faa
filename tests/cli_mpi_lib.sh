# Shared by the command-line tests under mpirun (sourced; uses $fail): a small label<TAB>text
# corpus whose labels follow from its words, and the comparison of a run with one process's.

synthetic_corpus() {  # 240 lines on stdout
  for i in $(seq 240); do
    case $((i % 3)) in
      0) printf 'animal\tthe lion and the tiger run fast %s\n' "$i" ;;
      1) printf 'tool\ta hammer and a saw cut the wood %s\n' "$i" ;;
      2) printf 'food\tbread with honey and cheese %s\n' "$i" ;;
    esac
  done
}

# metrics.jsonl without its wall-clock fields.
untimed() { sed -E 's/"(tokens_per_s|seconds)":[^,}]*,?//g' "$1/metrics.jsonl"; }

same_run() {  # run dir, reference dir, label: the same checkpoint bytes, metrics and results
  cmp -s "$1/checkpoint.safetensors" "$2/checkpoint.safetensors" ||
    { echo "FAIL: train $3: the checkpoint differs from one process's"; fail=1; }
  [[ -n "$(untimed "$1")" && "$(untimed "$1")" == "$(untimed "$2")" ]] ||
    { echo "FAIL: train $3: metrics.jsonl differs from one process's"; fail=1; }
  cmp -s "$1/results.json" "$2/results.json" ||
    { echo "FAIL: train $3: results.json differs"; fail=1; }
}
