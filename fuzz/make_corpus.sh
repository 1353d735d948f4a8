#!/usr/bin/env bash
# Seed corpora for the fuzz targets, from the PEFT fixtures (tests/fixtures):
#   safetensors/     every fixture .safetensors file below 256 KiB (adapters and module inputs)
#   peft_adapter/    each fixture adapter as its target reads it: adapter_config.json, NUL, the tensors
set -euo pipefail
out=${1:?usage: fuzz/make_corpus.sh OUT_DIR}
fixtures="$(dirname "$0")/../tests/fixtures"
mkdir -p "$out/safetensors" "$out/peft_adapter"
for f in "$fixtures"/*.safetensors "$fixtures"/adapter_*/adapter_model.safetensors; do
  [ "$(stat -c %s "$f")" -lt 262144 ] && cp "$f" "$out/safetensors/$(basename "$(dirname "$f")")_$(basename "$f")"
done
for d in "$fixtures"/adapter_*/; do
  { cat "$d/adapter_config.json"; printf '\0'; cat "$d/adapter_model.safetensors"; } >"$out/peft_adapter/$(basename "$d")"
done
ls "$out"/* | wc -l
