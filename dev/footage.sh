#!/usr/bin/env bash
# Fetch OpenCV's sample footage (Debian package opencv-doc) into .clipguard/footage/ (ignored),
# then cut the test clips from it. The clips are committed; run this only to re-make them.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.clipguard/footage
mkdir -p "$dest"
if [ ! -f "$dest/root/usr/share/doc/opencv-doc/examples/data/vtest.avi" ]; then
  (cd "$dest" && apt-get download opencv-doc)
  dpkg -x "$dest"/opencv-doc_*_all.deb "$dest/root"
fi
.venv/bin/python tests/fixtures/make_clips.py "$dest/root/usr/share/doc/opencv-doc/examples/data"
