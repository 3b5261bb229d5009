#!/usr/bin/env bash
# The paper's setup, online on a GPU machine: Gemma Scope 16k layer 20 (Gemma-2-2B) as the Concept Atlas with
# Neuronpedia's labels, Llama-3.1-8B as the subject at the paper's layers, the evaluations, and a Hub release.
# Needs: network, a GPU, access to meta-llama/Llama-3.1-8B (gated: `hf auth login`), a Hub write token to publish.
# DRY=1 checks every command's inputs and prints the plans without computing anything.
set -euo pipefail
cd "$(dirname "$0")/.."
atlas=${ATLAS:-.venv/bin/atlas}
SUBJECT=${SUBJECT:-meta-llama/Llama-3.1-8B}
LAYERS=${LAYERS:-3,12,19,25,30}
N=${N:-1000000}
REPO=${REPO:-you/llama-3.1-8b-gemma-scope-atlas}
dry=(); [ "${DRY:-0}" = 1 ] && dry=(--dry-run)

$atlas data prepare HuggingFaceFW/fineweb --name paper --hub-limit "$N"   # the paper's corpus: 1M sentences
$atlas atlas import-preset gemma-scope-2b-16k-l20                          # SAE via sae-lens, labels via Neuronpedia
$atlas fit --subject "$SUBJECT" --layers "$LAYERS" --site mlp --method all --dataset paper \
  --device cuda --dtype bfloat16 "${dry[@]}"
$atlas evaluate quality,retrieval --subject "$SUBJECT" --layers "$LAYERS" --features paper "${dry[@]}"
$atlas evaluate steering --subject "$SUBJECT" --layers 19 --concepts "paper:london;paper:dogs and cats" "${dry[@]}"
[ "${DRY:-0}" = 1 ] || $atlas publish --subject "$SUBJECT" --repo "$REPO"
