#!/usr/bin/env bash
# Unpack the Debian packages that the embedded default corpus is built from (WordNet 3.0 glosses
# and examples, fortunes) into $1, without root: `apt-get download` + `dpkg -x`. Versions are
# pinned so the corpus fingerprint is the same on every machine; on failure atlas falls back to
# what pip alone provides and warns.
set -u
dest=${1:-.cache/corpus-src}
pkgs="wordnet-base=1:3.0-37 fortunes=1:1.99.1-7.3 fortunes-min=1:1.99.1-7.3"
[ -f "$dest/.done" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if (cd "$tmp" && { apt-get download $pkgs >/dev/null 2>&1 || apt-get download wordnet-base fortunes fortunes-min >/dev/null 2>&1; }); then
  mkdir -p "$dest"
  for f in "$tmp"/*.deb; do dpkg -x "$f" "$dest"; done
  touch "$dest/.done"
  echo "corpus sources unpacked into $dest"
else
  echo "warning: could not download wordnet-base/fortunes with apt-get; the default corpus will be small" >&2
fi
exit 0
