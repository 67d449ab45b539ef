#!/usr/bin/env bash
# The README's main job: index the sample manuals in data/manuals and run a query.
# Uses the configured CLIP model when it can be loaded; otherwise says so and indexes lexical-only.
set -uo pipefail
cd "$(dirname "$0")/.."
INDEX_DIR="${MANUALRAG_INDEX_DIR:-data/index}"
QUERY="${1:-electric wiring layout}"

echo "== manualrag index data/manuals --index-dir $INDEX_DIR"
out=$(mktemp)
manualrag index data/manuals --index-dir "$INDEX_DIR" 2> >(tee "$out" >&2)
rc=$?
if [ "$rc" = 2 ] && grep -q -- "--no-dense" "$out"; then
  echo
  echo "!! The CLIP model could not be loaded (see above), so this demo runs LEXICAL-ONLY:"
  echo "!! figures, crops, OCR'd labels and captions are indexed, but no vectors."
  echo "!! Point --model (or 'model:' in config.yaml) at a local CLIP/SigLIP folder to add them."
  echo
  echo "== manualrag index data/manuals --index-dir $INDEX_DIR --no-dense"
  manualrag index data/manuals --index-dir "$INDEX_DIR" --no-dense
  rc=$?
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
