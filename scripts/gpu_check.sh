#!/usr/bin/env bash
# Packing and mixer throughput on a GPU, in one short run (issue 15's GPU figures).
#   scripts/gpu_check.sh [OUT_DIR]      (default: ./gpu_check)
# Writes pack.json — the d_model-64 basic example (examples/mqar_attention.toml) solo vs
# --pack 8 / 32 / 128: steps/s and model-steps/s of its real training step; the same for
# examples/mqar_mamba.toml solo vs --pack 32 (Mamba's scan folds a pack into its batch) — and
# mixers.json — `zoology bench mixers` on the GPU (fp32, d_model 128, L = 64…4096) — and
# prints both. Nothing trains to the end: a few minutes on one H200. With FIGURE2=1 it also
# writes figure2.json: `zoology bench sweep examples/zoology_figure2.toml --pack 4`, the
# Figure-2 sweep's estimated wall time solo and packed (84 groups timed: allow ~10 minutes).
set -euo pipefail
out=${1:-gpu_check}
mkdir -p "$out"
python -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
for k in 8 32 128; do
  zoology bench train examples/mqar_attention.toml --set model.d_model=64 --pack "$k" --steps 50 --json -q > "$out/pack$k.json"
done
zoology bench train examples/mqar_mamba.toml --pack 32 --steps 30 --json -q > "$out/pack_mamba32.json"
zoology bench mixers --device cuda --json -q > "$out/mixers.json"
python - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
packs = [r for k in (8, 32, 128) for r in json.loads((out / f"pack{k}.json").read_text())]
packs += json.loads((out / "pack_mamba32.json").read_text())
(out / "pack.json").write_text(json.dumps(packs, indent=2))
for r in packs:
    print(f"{r['experiment']:15s} pack {r['pack']:4d}: {r['steps_per_s']:8.2f} steps/s, {r['model_steps_per_s']:9.2f} model-steps/s, {r['vs_solo']}x solo")
for r in json.loads((out / "mixers.json").read_text()):
    print(f"{r['mixer']:26s} L={r['seq_len']:5d} {r['tokens_per_s']:>11,d} tokens/s  vs attention {r.get('vs_attention', '-')}")
PY
if [ "${FIGURE2:-0}" = 1 ]; then
  zoology bench sweep examples/zoology_figure2.toml --pack 4 --json -q > "$out/figure2.json"
  python -c 'import json, sys; t = json.load(open(sys.argv[1]))[-1]; print("Figure 2 sweep:", t["runs"], "runs, solo", t["solo_estimate"], "| --pack 4", t["packed_estimate"], "(%sx)" % t["speedup"])' "$out/figure2.json"
fi
