#!/usr/bin/env bash
# GGUF K-quant benchmark: `smelt quantize` against llama.cpp's `llama-quantize`, same thread count.
#
#   bench/gguf.sh [TYPE...]      types: Q4_K_M Q5_K_M Q6_K (default), or any file type both take
#
# Env: BENCH_DIR (default /tmp/smelt-bench), THREADS (default "1 $(nproc)"),
#      LLAMA_CPP_PYTHON (llama-cpp-python sdist version whose vendor/llama.cpp is built, 0.3.36).
#
# Once, cached in $BENCH_DIR/llama: downloads the llama-cpp-python sdist from PyPI (it vendors
# llama.cpp's full source) and builds only the `llama-quantize` target (CPU, GGML_NATIVE=ON,
# Release). Once, cached in $BENCH_DIR/gguf: a BF16 GGUF of the bench model
# ($BENCH_DIR/family/base, made by bench/run.sh's gen-family) written by `smelt quantize -t BF16`.
# Then, for every thread count and type, in the same run and from a warm page cache:
#   smelt:  smelt quantize -j N -t TYPE family/base  (bf16 safetensors -> TYPE)
#   llama:  llama-quantize base-bf16.gguf out.gguf TYPE N  (bf16 GGUF -> TYPE)
# and prints wall, user CPU and system CPU seconds, throughput (GB of input per wall second) and
# llama's wall time over smelt's (and user CPU over user CPU). Finally it checks that the two Q4_K_M files hold the same tensors
# (names, types, shapes and data bytes; the metadata differ: smelt's is its own).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BENCH_DIR="${BENCH_DIR:-/tmp/smelt-bench}"
THREADS="${THREADS:-1 $(nproc)}"
LCP="${LLAMA_CPP_PYTHON:-0.3.36}"
types=("$@"); [ ${#types[@]} -gt 0 ] || types=(Q4_K_M Q5_K_M Q6_K)
LL="$BENCH_DIR/llama"
QUANTIZE="$LL/bin/llama-quantize"

build_llama_quantize() {
  [ -x "$QUANTIZE" ] && return
  mkdir -p "$LL"
  command -v cmake >/dev/null && command -v ninja >/dev/null || pip install -q cmake ninja
  local sdist="$LL/llama_cpp_python-$LCP.tar.gz"
  if [ ! -f "$sdist" ]; then
    # --no-build-isolation: pip only reads the sdist's metadata (needs scikit-build-core),
    # instead of building cmake from source for an isolated build environment.
    python3 -c 'import scikit_build_core' 2>/dev/null || pip install -q scikit-build-core
    pip download -q --no-deps --no-binary :all: --no-build-isolation \
      "llama-cpp-python==$LCP" -d "$LL"
  fi
  local src="$LL/llama_cpp_python-$LCP/vendor/llama.cpp"
  [ -d "$src" ] || tar xzf "$sdist" -C "$LL"
  cmake -S "$src" -B "$LL/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >/dev/null
  cmake --build "$LL/build" --target llama-quantize -j "$(nproc)"
  mkdir -p "$LL/bin"
  cp "$LL/build/bin/llama-quantize" "$QUANTIZE"
}

# Runs "$@" under /usr/bin/time; prints "wall user sys" seconds.
timed() {
  /usr/bin/time -f "%e %U %S" -o "$BENCH_DIR/gguf/time.txt" "$@" >/dev/null 2>"$BENCH_DIR/gguf/log.txt" ||
    { cat "$BENCH_DIR/gguf/log.txt" >&2; exit 1; }
  cat "$BENCH_DIR/gguf/time.txt"
}

build_llama_quantize
cargo build --release -q -p merge-cli
SMELT="$ROOT/target/release/smelt"
MODEL="$BENCH_DIR/family/base"
until [ -f "$MODEL/model.safetensors.index.json" ]; do
  echo "waiting for $MODEL (bench/run.sh generates it)" >&2; sleep 30
done
mkdir -p "$BENCH_DIR/gguf"
BF16="$BENCH_DIR/gguf/base-bf16.gguf"
[ -f "$BF16" ] || "$SMELT" quantize --pre gpt-2 -t BF16 "$MODEL" "$BF16" >/dev/null

st_bytes=$(cat "$MODEL"/*.safetensors | wc -c)
gguf_bytes=$(wc -c < "$BF16")
echo "model: $MODEL ($((st_bytes / 1000000)) MB bf16 safetensors; BF16 GGUF $((gguf_bytes / 1000000)) MB)"
echo "llama-quantize: $QUANTIZE (llama.cpp from llama-cpp-python $LCP)"
echo "type,threads,smelt_wall_s,smelt_user_s,smelt_sys_s,smelt_gbps,llama_wall_s,llama_user_s,llama_sys_s,llama_gbps,wall_ratio,user_ratio"
for n in $THREADS; do
  for ty in "${types[@]}"; do
    cat "$MODEL"/*.safetensors "$BF16" >/dev/null
    s_out="$BENCH_DIR/gguf/smelt-$ty.gguf"; l_out="$BENCH_DIR/gguf/llama-$ty.gguf"
    read -r sw su ss < <(timed "$SMELT" quantize --force --pre gpt-2 -j "$n" -t "$ty" "$MODEL" "$s_out")
    read -r lw lu ls < <(timed "$QUANTIZE" "$BF16" "$l_out" "$ty" "$n")
    python3 - "$ty" "$n" "$sw" "$su" "$ss" "$lw" "$lu" "$ls" "$st_bytes" "$gguf_bytes" <<'P'
import sys
ty, n = sys.argv[1], sys.argv[2]
sw, su, ss, lw, lu, ls = map(float, sys.argv[3:9])
sb, gb = int(sys.argv[9]), int(sys.argv[10])
print(f"{ty},{n},{sw:.2f},{su:.2f},{ss:.2f},{sb/sw/1e9:.3f},"
      f"{lw:.2f},{lu:.2f},{ls:.2f},{gb/lw/1e9:.3f},{lw/sw:.2f},{lu/su:.2f}")
P
  done
done

if [ -f "$BENCH_DIR/gguf/smelt-Q4_K_M.gguf" ] && [ -f "$BENCH_DIR/gguf/llama-Q4_K_M.gguf" ]; then
  python3 -c 'import gguf' 2>/dev/null || pip install -q gguf==0.19.0
  python3 - "$BENCH_DIR/gguf/smelt-Q4_K_M.gguf" "$BENCH_DIR/gguf/llama-Q4_K_M.gguf" <<'P'
import sys
from gguf import GGUFReader
a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
ta = {t.name: t for t in a.tensors}
tb = {t.name: t for t in b.tensors}
assert ta.keys() == tb.keys(), f"tensor names differ: {sorted(ta.keys() ^ tb.keys())}"
bad = [n for n in ta
       if ta[n].tensor_type != tb[n].tensor_type
       or list(ta[n].shape) != list(tb[n].shape)
       or ta[n].data.tobytes() != tb[n].data.tobytes()]
total = sum(t.n_bytes for t in a.tensors)
if bad:
    print(f"Q4_K_M tensor data: {len(bad)} of {len(ta)} tensors DIFFER, e.g. {bad[:5]}")
    sys.exit(1)
print(f"Q4_K_M tensor data: all {len(ta)} tensors identical ({total / 1e6:.0f} MB)")
P
fi
