#!/usr/bin/env bash
# Installs Prometheus for the rollout analysis tests and the dev cluster: the Debian
# bookworm package, pinned by version and by the sha256 of its .deb, unpacked without root
# (apt-get download + dpkg-deb -x; nothing is installed on the system). It has a cache key
# of its own (this script, which holds the pins), apart from the control plane's
# (tools/build.sh) and the stores' (tools/stores/build.sh). .tools/prometheus-bin in the
# repository links to the cached folder.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache_root="${FOGLINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fogline}"

package=prometheus
version="2.42.0+ds-5+deb12u1"
# The sha256 of the bookworm .deb per architecture (as the archive's Packages index lists
# it: `apt-cache show prometheus=$version | grep SHA256`).
declare -A deb_sha256=(
  [amd64]=81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55
)

key="$(sha256sum "$here/build.sh" | cut -c1-16)"
out="$cache_root/prometheus/$key/bin"

link_into_repo() {
  mkdir -p "$repo/.tools"
  ln -sfn "$out" "$repo/.tools/prometheus-bin"
}

# A Prometheus installed another way, named by the variable the tests read too.
if [[ -n "${FOGLINE_PROMETHEUS_BIN:-}" && -x "$FOGLINE_PROMETHEUS_BIN/prometheus" ]]; then
  echo "prometheus: using $FOGLINE_PROMETHEUS_BIN/prometheus (FOGLINE_PROMETHEUS_BIN)"
  exit 0
fi

if [[ -x "$out/prometheus" ]]; then
  link_into_repo
  echo "prometheus: cached at $out"
  exit 0
fi

# What to do where this script cannot: the same Prometheus from anywhere else, or a build
# from its Go module (many minutes on 2 cores), placed where the tests look for it.
elsewhere="or install Prometheus 2.42 or later another way (for example
  go install github.com/prometheus/prometheus/cmd/prometheus@v0.316.0, which takes many
  minutes on 2 cores) and point FOGLINE_PROMETHEUS_BIN at the folder holding it"

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "prometheus: error: apt-get and dpkg-deb are needed to fetch the Debian package" \
    "$package=$version (a Debian or Ubuntu machine with Debian bookworm's archive in its" \
    "apt sources); $elsewhere" >&2
  exit 1
fi
arch="$(dpkg --print-architecture)"
want="${deb_sha256[$arch]:-}"
if [[ -z "$want" ]]; then
  echo "prometheus: error: no pinned sha256 of $package $version for $arch (pinned:" \
    "${!deb_sha256[*]}); add it to tools/prometheus/build.sh from" \
    "\`apt-cache show $package=$version\`, $elsewhere" >&2
  exit 1
fi

start=$SECONDS
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "prometheus: fetching the Debian package $package $version ($arch)"
if ! (cd "$work" && apt-get download -q "$package=$version" >"$work/apt.log" 2>&1); then
  cat "$work/apt.log" >&2
  echo "prometheus: error: apt-get download $package=$version failed: it needs Debian" \
    "bookworm's archive in the apt sources (deb http://deb.debian.org/debian bookworm main)" \
    "and a fresh index (apt-get update); $elsewhere" >&2
  exit 1
fi
deb="$(echo "$work"/*.deb)"
got="$(sha256sum "$deb" | cut -d' ' -f1)"
if [[ "$got" != "$want" ]]; then
  echo "prometheus: error: $(basename "$deb") has sha256 $got, but $want is pinned:" \
    "refusing it (a rebuilt or tampered package; pin a new one only after checking it)" >&2
  exit 1
fi
dpkg-deb -x "$deb" "$work/root"
mkdir -p "$out.partial"
cp "$work/root/usr/bin/prometheus" "$out.partial/"
"$out.partial/prometheus" --version >/dev/null
rm -rf "$out"
mv "$out.partial" "$out"
link_into_repo
echo "prometheus: installed in $((SECONDS - start)) s at $out"
