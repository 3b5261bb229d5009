#!/usr/bin/env bash
# Your own sentences -> your own atlas -> fit -> search. Usage: examples/own_corpus.sh my_text.txt [NAME]
# (.txt paragraphs, .jsonl with a "text" field, or .parquet). Everything goes to the registry in use
# ($ATLAS_HOME, or this checkout's .cache/atlas-home). Small defaults so it runs in minutes on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
atlas=${ATLAS:-.venv/bin/atlas}
FILE=${1:?give a text file}
NAME=${2:-mine}
N=${ATLAS_OWN_SENTENCES:-4000}
$atlas data prepare "$FILE" --name "$NAME"
FOUNDATION=${ATLAS_OWN_FOUNDATION:-gemma3-270m}
SUBJECT=${ATLAS_OWN_SUBJECT:-smollm2-135m-instruct}
LAYER=${ATLAS_OWN_LAYER:-12}
$atlas atlas build --dataset "$NAME" --name "$NAME" --foundation "$FOUNDATION" --layer "${ATLAS_OWN_ATLAS_LAYER:-12}" \
  --width "${ATLAS_OWN_WIDTH:-2048}" --k "${ATLAS_OWN_K:-32}" --train-sentences "$N" --label-sentences "$N"
$atlas fit --dataset "$NAME" --atlas "$NAME" --subject "$SUBJECT" --layers "$LAYER" --limit "$N"
$atlas search "${ATLAS_OWN_QUERY:-the main topic}" --atlas "$NAME" --subject "$SUBJECT" --layer "$LAYER" --top 5
