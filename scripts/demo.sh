#!/usr/bin/env bash
# The README's main job: index the sample manuals in data/manuals and run a query.
# Uses the configured CLIP model when it can be loaded; otherwise says so and indexes without CLIP vectors
# (--model none: the text model, installed with manualrag, still gives the semantic channel; keyword search
# as always), and as a last resort lexical-only.
set -uo pipefail
cd "$(dirname "$0")/.."
INDEX_DIR="${MANUALRAG_INDEX_DIR:-data/index}"
QUERY="${1:-electric wiring layout}"

echo "== manualrag index data/manuals --index-dir $INDEX_DIR"
out=$(mktemp)
# stderr is shown and kept in $out (a pipeline, so tee has written it all before it is read; pipefail
# gives manualrag's exit code)
{ manualrag index data/manuals --index-dir "$INDEX_DIR" 2>&1 >&3 | tee "$out" >&2; } 3>&1
rc=$?
if [ "$rc" = 2 ] && grep -q -- "--model none" "$out"; then
  echo
  echo "!! The CLIP model could not be loaded (see above), so this demo runs WITHOUT CLIP VECTORS:"
  echo "!! the semantic text channel (all-MiniLM-L6-v2) and keyword search find passages and figures"
  echo "!! (by captions, OCR'd labels and nearby text), but not by their pictures, and --image queries are off."
  echo "!! Point --model (or 'model:' in config.yaml) at a local CLIP/SigLIP folder and run index again to add them."
  echo "!! Until then, give 'manualrag index' --model none too (or export MANUALRAG_MODEL=none): without it, it"
  echo "!! tries to load the CLIP model again and stops with the error above."
  echo
  echo "== manualrag index data/manuals --index-dir $INDEX_DIR --model none"
  { manualrag index data/manuals --index-dir "$INDEX_DIR" --model none 2>&1 >&3 | tee "$out" >&2; } 3>&1
  rc=$?
  if [ "$rc" = 2 ] && grep -q -- "--no-dense" "$out"; then
    echo
    echo "!! The text model could not be loaded either (see above), so this demo runs LEXICAL-ONLY:"
    echo "!! figures, crops, OCR'd labels and captions are indexed, but no vectors."
    echo
    echo "== manualrag index data/manuals --index-dir $INDEX_DIR --no-dense"
    manualrag index data/manuals --index-dir "$INDEX_DIR" --no-dense
    rc=$?
  fi
fi
rm -f "$out"
[ "$rc" -le 1 ] || exit "$rc"
echo
echo "== manualrag query \"$QUERY\""
manualrag query "$QUERY" --index-dir "$INDEX_DIR" -k 5
echo
echo "== manualrag stats"
manualrag stats --index-dir "$INDEX_DIR"
echo
if [ "$INDEX_DIR" = data/index ]; then dir_arg=""; else dir_arg=" --index-dir $INDEX_DIR"; fi
echo "== Next: see the diagrams in a browser"
echo "   manualrag serve$dir_arg"
echo "   then open http://127.0.0.1:8080/ and search \"$QUERY\""
echo "   (figure hits are pictures; each hit opens its page with the region outlined; API at /docs)"
