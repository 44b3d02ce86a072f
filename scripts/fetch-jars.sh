#!/usr/bin/env bash
# Resolve every jar the local stack needs from Maven Central, once.
# Each jars/<name>/pom.xml lists one component; its jars land in
# $DCMMS_JAR_CACHE/<name>/ (default ~/.cache/dcmms-telemetry/jars). A component
# whose pom is unchanged since its last successful copy is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${DCMMS_JAR_CACHE:-$HOME/.cache/dcmms-telemetry/jars}"
command -v mvn >/dev/null || { echo "fetch-jars: Maven (mvn) is required: apt-get install maven" >&2; exit 1; }
for pom in jars/*/pom.xml; do
  name=$(basename "$(dirname "$pom")")
  dest="$cache/$name"
  stamp="$dest/.pom-$(sha1sum "$pom" | cut -c1-12)"
  if [ -f "$stamp" ]; then continue; fi
  echo ">> resolving $name jars from Maven Central into $dest (first time only; progress below)"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  if ! mvn -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$dest.tmp" 2>&1 | grep -E "Downloaded from|ERROR|BUILD" | sed 's/^/   /'; then :; fi
  if ! ls "$dest.tmp"/*.jar >/dev/null 2>&1 || [ "${PIPESTATUS[0]:-0}" != 0 ]; then
    echo "fetch-jars: could not resolve $pom (see the Maven errors above)" >&2; exit 1
  fi
  rm -rf "$dest" && mv "$dest.tmp" "$dest" && touch "$dest/.pom-$(sha1sum "$pom" | cut -c1-12)"
done
