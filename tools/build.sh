#!/usr/bin/env bash
# Builds the pinned control-plane binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, helm) from the Go modules beside this script.
# They land in a cache outside the repository, keyed by the pinned versions, and
# .tools/bin in the repository links to them. A warm cache makes this a no-op.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache_root="${FOGLINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fogline}"

key="$(cat "$here"/build.sh "$here"/*/go.mod "$here"/*/go.sum "$here"/*/*.go | sha256sum | cut -c1-16)"
out="$cache_root/tools/$key/bin"

link_into_repo() {
  mkdir -p "$repo/.tools"
  ln -sfn "$out" "$repo/.tools/bin"
}

binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)
complete=1
for b in "${binaries[@]}"; do [[ -x "$out/$b" ]] || complete=0; done
if [[ $complete == 1 ]]; then
  link_into_repo
  echo "tools: cached at $out"
  exit 0
fi

export GOFLAGS=-mod=mod
export CGO_ENABLED=0
mkdir -p "$out.partial"
start=$SECONDS

k8s_version="$(awk '/^require k8s.io\/kubernetes /{print $3}' "$here/k8s/go.mod")"
minor="$(echo "$k8s_version" | cut -d. -f2)"
build_date="2000-01-01T00:00:00Z"
version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  version_flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

echo "tools: building Kubernetes $k8s_version (several minutes on a cold cache)"
(cd "$here/k8s" && go build -trimpath -ldflags "-s -w $version_flags" -o "$out.partial/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)

echo "tools: building etcd"
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out.partial/etcd" .)

kwok_version="$(awk '/sigs.k8s.io\/kwok /{print $2; exit}' "$here/kwok/go.mod")"
echo "tools: building kwok $kwok_version"
(cd "$here/kwok" && go build -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version" \
  -o "$out.partial/kwok" sigs.k8s.io/kwok/cmd/kwok)

helm_version="$(awk '/helm.sh\/helm\/v3 /{print $2; exit}' "$here/helm/go.mod")"
echo "tools: building helm $helm_version"
(cd "$here/helm" && go build -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
  -o "$out.partial/helm" helm.sh/helm/v3/cmd/helm)

rm -rf "$out"
mv "$out.partial" "$out"
link_into_repo
echo "tools: built in $((SECONDS - start)) s at $out"
