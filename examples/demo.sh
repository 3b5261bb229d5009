#!/usr/bin/env bash
# The main job on the embedded default: corpus -> Concept Atlas (Gemma 3 270M + TopK SAE trained here)
# -> translations of SmolLM2-135M-Instruct at three layers with all five methods -> concept search
# -> translation quality and retrieval of every method (the paper's Tables 3 and 4) -> one steered generation.
# Everything is cached in the registry ($ATLAS_HOME): a second run reuses every artifact.
set -euo pipefail
cd "$(dirname "$0")/.."
atlas=".venv/bin/atlas"
N=${ATLAS_DEMO_SENTENCES:-12000}

$atlas models
$atlas data prepare
$atlas atlas build --foundation gemma3-270m --layer 12 --width 4096 --k 32 \
  --train-sentences "$N" --max-tokens 200000 --label-sentences "$N"
$atlas fit --subject smollm2-135m-instruct --layers 3,12,19 --site mlp --method all --limit "$N"
for concept in "dogs and cats" "food and eating" "cars and driving" "London" "music"; do
  $atlas search "$concept" --subject smollm2-135m-instruct --layer 19 --top 5 --samples 2
done
$atlas evaluate quality,retrieval --subject smollm2-135m-instruct --layers 3,12,19 --test-limit 5000
$atlas steer --concept "food and cooking" --subject smollm2-135m-instruct --layers 3,12,19 --relative --lambda 1 \
  --prompt "Once upon a time" --max-new-tokens 40
$atlas registry ls
