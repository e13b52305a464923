#!/usr/bin/env bash
# Installs the SWORD Bible modules behind the translation_en_es_bible task
# (KJV English + Reina-Valera 1909 Spanish, /usr/share/sword/modules/texts/ztext/).
# Needs root (or sudo) and access to the Debian archive. Idempotent.
set -euo pipefail
PACKAGES=(sword-text-kjv sword-text-sparv)
if dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
  echo "translation data already installed: ${PACKAGES[*]}"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root to apt-get install ${PACKAGES[*]}" >&2; exit 1; }
  SUDO=sudo
fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${PACKAGES[@]}"
echo "installed ${PACKAGES[*]}"
