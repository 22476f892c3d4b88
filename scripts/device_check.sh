#!/usr/bin/env bash
# CUDA check on a GPU machine with no network: build llama-cpp-python with CUDA from a
# carried source tarball, then run mlxgen's detection, a greedy run, greedy parity with
# Llama.generate, and the bench against the native loop, all with every layer on the GPU.
#
# Needs, in .dev/ (git-ignored, carried): llama-src.tgz (llama-cpp-python's sdist, stripped
# of its git pack, docs and test models) and tiny.gguf (scripts/make_tiny_gguf.py).
# Results go to $OUT (or /tmp/out).
set -uo pipefail
ROOT=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 --version

[ -d /tmp/site/llama_cpp ] && SKIP_BUILD=1
for w in .dev/*.whl; do [ -e "$w" ] && python3 -m pip install -q --no-index --no-deps --target /tmp/site "$w"; done
tar xzf .dev/llama-src.tgz -C /tmp
cd /tmp/llama_cpp_python-0.3.36 || exit 1
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_CCACHE=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL=16
start=$(date +%s)
[ -n "${SKIP_BUILD:-}" ] || timeout "${BUILD_TIMEOUT:-420}" python3 -m pip install -q --no-build-isolation --no-deps --no-cache-dir --target /tmp/site . \
  > "$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
tail -5 "$OUT/build.log"

# mlxgen as installed: toolkit/ -> mlxgen, backends/ -> mlxgen.backends, configs/ -> mlxgen.configs
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r "$ROOT/toolkit" /tmp/pkg/mlxgen && cp -r "$ROOT/backends" /tmp/pkg/mlxgen/backends \
  && cp -r "$ROOT/configs" /tmp/pkg/mlxgen/configs
export PYTHONPATH=/tmp/pkg:/tmp/site:/tmp/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py
export MLXGEN_CACHE=/tmp/mlxgen-cache
cd "$ROOT" || exit 1
M="python3 -m mlxgen"
$M doctor 2>&1 | tee "$OUT/doctor.txt"
$M run "Hello, GPU" --model .dev/tiny.gguf -n 32 --temperature 0 2>&1 | tee "$OUT/run.txt"
python3 - <<'EOF' 2>&1 | tee "$OUT/parity.txt"
from mlxgen import hardware
from mlxgen.backends.llamacpp import LlamaCppBackend
from mlxgen.loop import generate
from mlxgen.sampling import SamplingParams, make_sampler
from mlxgen.tokenizer import Tokenizer

choice = hardware.detect(hardware.gather_facts())
print("choice:", choice)
tok = Tokenizer.from_gguf(".dev/tiny.gguf")
b = LlamaCppBackend(".dev/tiny.gguf", n_ctx=1024, n_threads=choice.n_threads, n_gpu_layers=(-1 if choice.gpu else 0))
print("device:", b.device)
for prompt in ["Hello there", "The quick brown fox", "def f(x):\n    return"]:
    ids = tok.encode(prompt)
    b.trim(0)
    ours = list(generate(b, ids, make_sampler(SamplingParams(temperature=0)), tok.decode, max_tokens=64))[-1].tokens
    b._llm.reset()
    theirs = []
    for t in b._llm.generate(ids, temp=0.0, top_k=1):
        theirs.append(t)
        if len(theirs) == 64:
            break
    print(f"greedy parity {prompt!r}: {ours == theirs} ({len(ours)} tokens)")
b.close()
EOF
$M bench --vs-native --model .dev/tiny.gguf -p 512 -n 256 -r 7 2>&1 | tee "$OUT/bench.txt"
$M bench --vs-native --model .dev/tiny.gguf -p 512 -n 256 -r 7 -o json > "$OUT/bench.json" 2>/dev/null
