#!/usr/bin/env bash
# Debian packages the test suite's fault injection needs (docs/chaos.md "Requirements"):
#   nftables   one-way and multi-node partitions in `esdb chaos drill --netns`
#   faketime   libfaketime for `esdb chaos clock`
#   gcc        builds the fsync-delay shim of `esdb chaos slow-disk` (esdb_cli/chaos/slowsync.c)
#   e2fsprogs, mount   mkfs.ext4 and losetup for `esdb chaos disk-full`'s loop image
#   strace     captures every socket read/write of cluster members (tests/cluster/test_secret_on_wire.py)
# Installs only what is missing; a no-op (with a message) when not root or nothing is missing.
# The tests that need a package skip with the reason when it is absent.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # mkfs.ext4 and losetup live there

# command -> Debian package that provides it
declare -A need=(
  [nft]=nftables
  [faketime]=faketime
  [gcc]=gcc
  [libc-dev]=libc6-dev
  [mkfs.ext4]=e2fsprogs
  [losetup]=mount
  [strace]=strace
)

missing=()
for cmd in "${!need[@]}"; do
  case "$cmd" in
    libc-dev) [ -e /usr/include/dlfcn.h ] || missing+=("${need[$cmd]}") ;;
    *) command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}") ;;
  esac
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "dev-env/ci-packages.sh: all fault-injection packages present" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "dev-env/ci-packages.sh: not root, not installing: ${missing[*]} (those tests will skip)" >&2
  exit 0
fi
echo "dev-env/ci-packages.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A failed install is reported, not fatal: the tests that need a package skip and say why.
if ! { apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null &&
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" \
    >/dev/null; }; then
  echo "dev-env/ci-packages.sh: WARNING: could not install ${missing[*]}" >&2
fi
