#!/usr/bin/env bash
# Merge benchmark on a synthetic TinyLlama-1.1B-shaped family (bf16, sharded: base, ft1, ft2).
#
#   bench/run.sh [METHOD...]   methods: linear (default), ties, dare_ties, della, breadcrumbs_ties,
#                              slerp, task_arithmetic,
#                              linear-q4km (the linear merge written as Q4_K_M GGUF in one pass)
#
# For each method it measures, in the same run: smelt's wall time and peak RSS
# (/usr/bin/time -v), and the I/O floor (bench's io-floor: read every input byte once, write
# the output once, fsync). It prints the figures and their ratio, and smelt's wall time on one
# thread (SINGLE=0 skips that run) to show how it scales. The family is generated once
# into $BENCH_DIR (default /tmp/smelt-bench, ~6.6 GB). Inputs are read once beforehand so smelt
# and the floor both run from a warm page cache (the floor is then memory- not disk-bound).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR="${BENCH_DIR:-/tmp/smelt-bench}"
THREADS="${THREADS:-$(nproc)}"
methods=("$@"); [ ${#methods[@]} -gt 0 ] || methods=(linear)

cargo build --release -q -p merge-cli -p smelt-bench
SMELT="$PWD/target/release/smelt"
"$PWD/target/release/gen-family" "$BENCH_DIR/family" --tokenizer "$PWD/tests/fixtures/models/tiny-llama/base"
F="$BENCH_DIR/family"
mkdir -p "$BENCH_DIR/recipes"

recipe() {
  case "$1" in
    linear|linear-q4km) cat <<Y
models:
  - {model: $F/base, parameters: {weight: 0.4}}
  - {model: $F/ft1, parameters: {weight: 0.3}}
  - {model: $F/ft2, parameters: {weight: 0.3}}
merge_method: linear
Y
    ;;
    task_arithmetic|ties|dare_ties|della) cat <<Y
models:
  - {model: $F/ft1, parameters: {weight: 0.5, density: 0.5}}
  - {model: $F/ft2, parameters: {weight: 0.5, density: 0.5}}
merge_method: $1
base_model: $F/base
Y
    ;;
    breadcrumbs_ties) cat <<Y
models:
  - {model: $F/ft1, parameters: {weight: 0.5, density: 0.5, gamma: 0.01}}
  - {model: $F/ft2, parameters: {weight: 0.5, density: 0.5, gamma: 0.01}}
merge_method: $1
base_model: $F/base
Y
    ;;
    slerp) cat <<Y
models:
  - {model: $F/ft1}
  - {model: $F/ft2}
merge_method: slerp
base_model: $F/ft1
parameters: {t: 0.4}
Y
    ;;
    *) echo "unknown method $1" >&2; exit 2 ;;
  esac
}

inputs=$(ls "$F"/base/*.safetensors "$F"/ft1/*.safetensors "$F"/ft2/*.safetensors)
in_bytes=$(cat $inputs | wc -c)
out_bytes=$(cat "$F"/base/*.safetensors | wc -c)
echo "family: $F ($((in_bytes / 1000000)) MB of inputs), threads: $THREADS"
echo "method,smelt_s,floor_s,floor_over_smelt,read_gbps,peak_rss_mb,smelt_1t_s,scaling"
for m in "${methods[@]}"; do
  recipe "$m" > "$BENCH_DIR/recipes/$m.yml"
  used="$inputs"; [ "$m" = slerp ] && used=$(ls "$F"/ft1/*.safetensors "$F"/ft2/*.safetensors)
  used_bytes=$(cat $used | wc -c)
  out="$BENCH_DIR/out-$m"; rm -rf "$out"
  floor=$("$PWD/target/release/io-floor" "$BENCH_DIR/floor.bin" "$out_bytes" $used | sed 's/.*io_floor_seconds=\([0-9.]*\).*/\1/')
  extra=(); [ "$m" = linear-q4km ] && extra=(--gguf Q4_K_M --pre gpt-2)
  timed() { # THREADS TAG: runs smelt, prints "wall rss"
    rm -rf "$out"
    /usr/bin/time -v "$SMELT" run --quiet --threads "$1" "${extra[@]}" "$BENCH_DIR/recipes/$m.yml" "$out" 2> "$BENCH_DIR/time-$m-$2.txt"
    local w r
    w=$(grep "Elapsed (wall clock)" "$BENCH_DIR/time-$m-$2.txt" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    r=$(grep "Maximum resident set size" "$BENCH_DIR/time-$m-$2.txt" | awk '{print $NF}')
    echo "$w $r"
  }
  read -r wall rss < <(timed "$THREADS" all)
  wall1=0
  if [ "${SINGLE:-1}" = 1 ] && [ "$THREADS" != 1 ]; then read -r wall1 _ < <(timed 1 one); fi
  python3 - "$m" "$wall" "$floor" "$used_bytes" "$rss" "$wall1" <<'P'
import sys
m, wall, floor, used, rss, wall1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
one = f"{wall1:.2f},{wall1/wall:.2f}x" if wall1 > 0 else ","
print(f"{m},{wall:.2f},{floor:.2f},{floor/wall:.2f},{used/wall/1e9:.2f},{rss/1024:.0f},{one}")
P
  rm -rf "$out"
done
