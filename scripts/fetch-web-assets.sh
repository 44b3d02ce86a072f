#!/usr/bin/env bash
# Vendors the operator console's chart library (uPlot) from the npm registry into
# api/console/static/vendor/uplot/ (git-ignored): a pinned version, checked against the
# registry's integrity hash, fetched only when missing or another version. No CDN at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
UPLOT_VERSION=1.6.32
UPLOT_INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
DEST=api/console/static/vendor/uplot
STAMP="$DEST/.version"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$UPLOT_VERSION" ] \
   && [ -f "$DEST/uPlot.iife.min.js" ] && [ -f "$DEST/uPlot.min.css" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "fetch-web-assets: npm is needed to fetch uplot@$UPLOT_VERSION (apt-get install npm);" \
       "the console works without charts meanwhile" >&2
  exit 1
fi
echo ">> fetching uplot@$UPLOT_VERSION from the npm registry (console charts)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tarball=$(cd "$tmp" && npm pack --silent "uplot@$UPLOT_VERSION")
actual="sha512-$(openssl dgst -sha512 -binary "$tmp/$tarball" | base64 -w0)"
if [ "$actual" != "$UPLOT_INTEGRITY" ]; then
  echo "fetch-web-assets: uplot@$UPLOT_VERSION integrity mismatch ($actual)" >&2
  exit 1
fi
tar -xzf "$tmp/$tarball" -C "$tmp"
mkdir -p "$DEST"
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$DEST/"
echo "$UPLOT_VERSION" > "$STAMP"
echo ">> uplot@$UPLOT_VERSION in $DEST"
