#!/usr/bin/env bash
# Builds the artifact stores that the dev cluster runs beside the control plane: versitygw
# (an S3 gateway over a local folder) and the CNCF distribution registry (an OCI registry),
# each pinned by the Go module in the folder of its name. They have a cache key of their
# own, apart from the control plane's (tools/build.sh), so that pinning a store never
# rebuilds Kubernetes. .tools/stores-bin in the repository links to the cached folder.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache_root="${FOGLINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fogline}"

key="$(cat "$here"/build.sh "$here"/*/go.mod "$here"/*/go.sum | sha256sum | cut -c1-16)"
out="$cache_root/stores/$key/bin"

link_into_repo() {
  mkdir -p "$repo/.tools"
  ln -sfn "$out" "$repo/.tools/stores-bin"
}

if [[ -x "$out/versitygw" && -x "$out/registry" ]]; then
  link_into_repo
  echo "stores: cached at $out"
  exit 0
fi

export GOFLAGS=-mod=mod
export CGO_ENABLED=0
mkdir -p "$out.partial"
start=$SECONDS

version_of() { awk -v m="$1" '$1 == m {print $2; exit}' "$2"; }

versitygw_version="$(version_of github.com/versity/versitygw "$here/versitygw/go.mod")"
echo "stores: building versitygw $versitygw_version"
(cd "$here/versitygw" && go build -trimpath \
  -ldflags "-s -w -X main.Version=$versitygw_version" \
  -o "$out.partial/versitygw" github.com/versity/versitygw/cmd/versitygw)

registry_version="$(version_of github.com/distribution/distribution/v3 "$here/registry/go.mod")"
echo "stores: building registry $registry_version"
(cd "$here/registry" && go build -trimpath \
  -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$registry_version" \
  -o "$out.partial/registry" github.com/distribution/distribution/v3/cmd/registry)

rm -rf "$out"
mv "$out.partial" "$out"
link_into_repo
echo "stores: built in $((SECONDS - start)) s at $out"
