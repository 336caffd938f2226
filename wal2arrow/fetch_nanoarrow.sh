#!/bin/sh
# Fetch the pinned nanoarrow source distribution and lay out the C sources the plugin needs:
#   $DEST/include/nanoarrow/...        headers (with a generated, namespaced nanoarrow_config.h)
#   $DEST/include/flatcc/...           flatcc runtime headers
#   $DEST/c/*.c                        the C files compiled into the plugin
# Usage: fetch_nanoarrow.sh DEST PYTHON LOCKFILE
set -eu
dest=$1; python=$2; lock=$3
[ -f "$dest/.complete" ] && exit 0
version=$(sed -n 's/^nanoarrow==\([0-9.]*\).*/\1/p' "$lock")
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nanoarrow-fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Only nanoarrow itself as a source distribution; its build backend may come as wheels.
# With meson-python already installed, skip the isolated build environment (saves ~40 s).
if "$python" -c "import mesonpy, Cython" 2>/dev/null && PATH="$(dirname "$python"):$PATH" command -v meson >/dev/null; then
    iso="--no-build-isolation"
else
    iso=""
fi
if [ -n "${NANOARROW_SDIST:-}" ]; then
    # A copy obtained elsewhere: it must match the pinned hash.
    want=$(sed -n 's/.*--hash=sha256:\([0-9a-f]*\).*/\1/p' "$lock")
    have=$(sha256sum "$NANOARROW_SDIST" | cut -d' ' -f1)
    if [ "$want" != "$have" ]; then
        echo "wal2arrow: $NANOARROW_SDIST has sha256 $have, nanoarrow.lock pins $want." >&2
        exit 1
    fi
    cp "$NANOARROW_SDIST" "$tmp/nanoarrow-$version.tar.gz"
elif ! PATH="$(dirname "$python"):$PATH" "$python" -m pip download --quiet --no-deps --no-binary nanoarrow \
        $iso --require-hashes -r "$lock" -d "$tmp" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    echo "wal2arrow: could not download nanoarrow $version from PyPI (see pip's output above)." >&2
    echo "  Fix: make PyPI reachable, or unpack nanoarrow-$version.tar.gz and pass NANOARROW_SDIST=<path>." >&2
    exit 1
fi
tar -xzf "$tmp/nanoarrow-$version.tar.gz" -C "$tmp"
root="$tmp/nanoarrow-$version/subprojects"
na="$root/arrow-nanoarrow/src/nanoarrow"
flatcc=$(ls -d "$root"/flatcc-* | head -n 1)
rm -rf "$dest.partial"
mkdir -p "$dest.partial/include" "$dest.partial/c"
cp -R "$na" "$dest.partial/include/nanoarrow"
cp -R "$flatcc/include/flatcc" "$dest.partial/include/flatcc"
major=${version%%.*}; rest=${version#*.}; minor=${rest%%.*}; patch=${rest#*.}
sed -e "s/@NANOARROW_VERSION_MAJOR@/$major/" -e "s/@NANOARROW_VERSION_MINOR@/$minor/" \
    -e "s/@NANOARROW_VERSION_PATCH@/$patch/" -e "s/@NANOARROW_VERSION@/$version/" \
    -e "s/@NANOARROW_NAMESPACE_DEFINE@/#define NANOARROW_NAMESPACE Wal2Arrow/" \
    "$na/nanoarrow_config.h.in" > "$dest.partial/include/nanoarrow/nanoarrow_config.h"
for f in array schema utils array_stream; do cp "$na/common/$f.c" "$dest.partial/c/na_$f.c"; done
for f in encoder writer decoder codecs; do cp "$na/ipc/$f.c" "$dest.partial/c/na_ipc_$f.c"; done
for f in builder emitter refmap verifier; do cp "$flatcc/src/runtime/$f.c" "$dest.partial/c/flatcc_$f.c"; done
touch "$dest.partial/.complete"
rm -rf "$dest"
mv "$dest.partial" "$dest"
