#!/usr/bin/env bash
# Install the Debian packages the local stack needs (Mosquitto broker and clients),
# and check the tools that cannot be installed here (java, mvn). Idempotent: does
# nothing when everything is present; runs `apt-get update` only when a package
# is missing and apt has no package lists yet or cannot find the package.
set -euo pipefail

# chromium: the console's browser tests (Playwright drives the system browser, not a download).
packages=(mosquitto mosquitto-clients chromium)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
    echo "install-system-deps: need root (or sudo) to run: apt-get install ${missing[*]}" >&2; exit 1
  fi
  if ! command -v apt-get >/dev/null; then
    echo "install-system-deps: apt-get not found; install these packages by hand: ${missing[*]}" >&2; exit 1
  fi
  # Update the package lists only if apt does not know a candidate for a missing package.
  need_update=0
  for pkg in "${missing[@]}"; do
    cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
  done
  if [ "$need_update" = 1 ]; then
    echo ">> apt-get update (package lists missing or stale)"
    "${sudo[@]}" apt-get update -q
  fi
  echo ">> apt-get install ${missing[*]}"
  # The Debian package would start a system-wide broker on port 1883, which the
  # stack's own broker needs. A temporary policy-rc.d (exit 101 = "do not start")
  # stops maintainer scripts from starting it, unless the machine already has one.
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    added_policy=1
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
  if [ "$added_policy" = 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
  [ "$status" = 0 ] || { echo "install-system-deps: apt-get install failed" >&2; exit "$status"; }
  # On systemd machines, keep the system broker from claiming 1883 at next boot.
  if [[ " ${missing[*]} " == *" mosquitto "* ]] && [ -d /run/systemd/system ]; then
    echo ">> disabling the system-wide mosquitto service (the stack runs its own broker)"
    "${sudo[@]}" systemctl disable --now mosquitto >/dev/null 2>&1 || true
  fi
else
  echo ">> system packages present: ${packages[*]}"
fi

# Tools we check but do not install: the JDK and Maven are prerequisites.
for tool in java mvn; do
  if ! command -v "$tool" >/dev/null; then
    echo "install-system-deps: '$tool' not found; install a JDK 17 and Maven (apt-get install openjdk-17-jdk-headless maven)" >&2
    exit 1
  fi
done
java_major=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
if [ "${java_major%%.*}" -lt 17 ] 2>/dev/null; then
  echo "install-system-deps: Java 17 or newer is required (found $java_major)" >&2; exit 1
fi
