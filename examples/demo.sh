#!/usr/bin/env bash
# The main job on the embedded default, end to end, everything cached in the checkout's registry
# (.cache/atlas-home, which every `atlas` command run inside this checkout then finds by itself):
# corpus -> Concept Atlas (Gemma 3 270M layer 12 + a TopK SAE trained here, labelled offline)
# -> translations of SmolLM2-135M-Instruct (MLP neurons, layers 3, 12, 19, 25; all five methods; and its residual
#    stream at layers 6 and 9, where steering works: see atlascli/sites.py; there also word-aligned, which steer)
# -> the user's examples: `atlas search "secrets"`, `atlas steer --concept london --lambda 35`
# -> translation quality and retrieval of every method (the paper's Tables 3 and 4, on a smaller test set).
# A second run reuses every artifact.
set -euo pipefail
cd "$(dirname "$0")/.."
atlas=".venv/bin/atlas"
N=${ATLAS_DEMO_SENTENCES:-10000}      # atlas and fit sentences (the atlas's labelling sentences, so their codes are
                                      # reused by the fit; `atlas atlas build` alone defaults to 12,000)
TEST=${ATLAS_DEMO_TEST:-1500}         # held-out test sentences for the evaluation tables (the paper: 50% of 1M)
RESID=$(( N < 6000 ? N : 6000 ))      # sentences of the residual-stream fits that steering uses (the first of the N,
                                      # so the atlas codes are reused)
WORDS=${ATLAS_DEMO_WORD_SENTENCES:-4000}  # sentences of the word-aligned fits steering prefers (atlascli/wordfit.py)
DTYPE=${ATLAS_DEMO_DTYPE:-bfloat16}   # forward passes of both models (2.2x faster than float32 on this CPU's
                                      # AVX-512 BF16; pooled activations agree with float32 at cosine 0.999)
step() { printf '\n\033[1m== %s\033[0m  (%dm%02ds since the demo started)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

step "models and corpus"
$atlas models
$atlas data prepare
step "Concept Atlas ($N sentences, 4096 features, k=32, $DTYPE forward passes)"
$atlas atlas build --train-sentences "$N" --label-sentences "$N" --dtype "$DTYPE"
step "translations of SmolLM2-135M-Instruct"
$atlas fit --subject smollm2-135m-instruct --layers 3,12,19,25 --site mlp --method all --limit "$N" --dtype "$DTYPE"
step "residual-stream translations for steering (layers 6, 9; $RESID sentences)"
$atlas fit --subject smollm2-135m-instruct --layers 6,9 --site resid --limit "$RESID" --dtype "$DTYPE"
step "word-aligned residual translations for steering (layers 6, 9; $WORDS sentences, about 20,000 content-word pairs)"
$atlas fit --subject smollm2-135m-instruct --layers 6,9 --site resid --pooling word --limit "$WORDS"
step "subject activations of $TEST held-out test sentences (examples for search/explain, evaluation)"
$atlas extract --model smollm2-135m-instruct --layers 3,12,19,25 --site mlp --split test --limit "$TEST" --dtype "$DTYPE"
step "search: atlas search \"secrets\""
$atlas search "secrets" --layer 12 --top 5 --samples 2
step "steer: atlas steer --concept london --lambda 35"
$atlas steer --concept london --lambda 35 --max-new-tokens 48 --random
step "evaluation (Tables 3 and 4, $TEST test sentences)"
$atlas evaluate quality,retrieval --subject smollm2-135m-instruct --layers 3,12,19,25 --test-limit "$TEST"
step "registry"
$atlas registry ls
printf '\nthe demo took %dm%02ds\n' $((SECONDS / 60)) $((SECONDS % 60))
cat <<'NEXT'

Next, from anywhere in this checkout (the registry above is found automatically):
  .venv/bin/atlas search "dogs and cats"                    # concept -> subject features + aligned sentences
  .venv/bin/atlas steer --concept "music" --lambda 35       # eq. 4 at the default steering layers
  .venv/bin/atlas atlas show --feature 17                   # one atlas feature: label, coherence, samples
  .venv/bin/atlas explain --layer 12 --feature 100          # a subject neuron in atlas concepts
  .venv/bin/atlas read "The stock market fell sharply today."       # every fitted layer and their mean z
  .venv/bin/python examples/quickstart.py                   # the Python API
NEXT
