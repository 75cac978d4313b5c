#!/usr/bin/env bash
# scripts/ensure.sh — make this checkout ready to test, demo or benchmark.
#
# Called first by `npm test`, `npm run demo` and `npm run bench` (and so by
# .ci/run on a fresh machine). Does only what is missing or stale, so it is
# quick (well under a second) when everything is in place:
#   a. system packages (Open MPI, cmake, compilers, QEMU): apt-get when root,
#      otherwise print the command to run and stop;
#   b. npm dependencies: `npm ci` when node_modules is missing or older than
#      package-lock.json;
#   c. the native addon and the PMPI shim: `npm run build:native` when either
#      is missing or anything under native/ changed since the last build;
#   d. MPI test programs: scripts/build-mpi-programs.sh (it skips up-to-date
#      binaries itself);
#   e. TypeScript: `npm run build:ts` when any .ts under src/, bench/ or
#      plugins/ (or a tsconfig) changed since the last build.
# Progress goes to stderr, prefixed "symbio: "; nothing is printed when
# nothing had to be done (SYMBIO_ENSURE_VERBOSE=1 says what was up to date).
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# What the native build produces (paths relative to the repository root).
ADDON="build/Release/symbio.node"
SHIM_LIB="build/Release/libsymbio-shim.so"
# Touched after a successful native / TypeScript build; sources newer than a
# stamp mean "rebuild". (A stamp rather than the artifacts' own mtimes, so a
# change that does not relink an artifact does not trigger a rebuild forever.)
NATIVE_STAMP="build/.symbio-native.stamp"
TS_STAMP="dist/.symbio-ts.stamp"
TS_DIRS=(src bench plugins)

# debootstrap .. xz-utils: the guest image (src/image/): debootstrap and its
# archive keyring for the rootfs, mkfs.ext4 -d for root.img, ssh-keygen/ssh for
# the image's keys, flock for the cache lock, xz for the kernel's payload.
# chromium: the report test renders `symbio report`'s page in a real browser
# (headless) and checks its screenshot.
# QEMU (qemu-system-x86) is not in this list: it comes from bookworm-backports,
# see "a2" below.
APT_PACKAGES=(openmpi-bin libopenmpi-dev cmake g++ make pkg-config
              debootstrap debian-archive-keyring e2fsprogs openssh-client util-linux xz-utils
              chromium)
# Commands those packages provide: the check used where dpkg is not available.
NEEDED_COMMANDS=(mpirun mpicc cmake g++ make pkg-config qemu-system-x86_64
                 debootstrap mkfs.ext4 ssh-keygen ssh flock xz chromium)

say() { printf 'symbio: %s\n' "$*" >&2; }
note() { [[ -z "${SYMBIO_ENSURE_VERBOSE:-}" ]] || say "$@"; }
die() { say "$*"; exit 1; }

# --- node ---------------------------------------------------------------------
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
(( node_major >= 20 )) || die "Node.js 20 or newer is needed (found: $(node --version 2>/dev/null || echo none))"

# --- a. system packages ---------------------------------------------------------
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  installed="$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)"
  for p in "${APT_PACKAGES[@]}"; do
    grep -q "^${p} ii" <<<"$installed" || missing+=("$p")
  done
  if ((${#missing[@]} > 0)); then
    if [[ "$(id -u)" == 0 ]]; then
      say "installing system packages (apt-get): ${missing[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt_log="$(mktemp "${TMPDIR:-/tmp}/symbio-apt.XXXXXX")"
      if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
           >"$apt_log" 2>&1 </dev/null; then
        tail -n 40 "$apt_log" >&2
        rm -f "$apt_log"
        die "apt-get install ${missing[*]} failed (its last lines are above)"
      fi
      rm -f "$apt_log"
    else
      say "missing system packages: ${missing[*]}"
      say "install them with:"
      say "  sudo apt-get install -y --no-install-recommends ${missing[*]}"
      exit 1
    fi
  fi
else
  for c in "${NEEDED_COMMANDS[@]}"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  if ((${#missing[@]} > 0)); then
    die "missing commands: ${missing[*]} (install Open MPI with its development files, cmake, a C/C++ compiler, make and pkg-config)"
  fi
fi

# --- a2. QEMU 10 -------------------------------------------------------------------
# Debian 12's own QEMU 7.2 corrupts running TCG guests in precopy migration now
# and then (docs/performance.md: 2 of 60 migrations broke the guest; QEMU
# 10.0.2 from Debian's official bookworm-backports: 0 of 150). symbio's tests,
# demo and benchmarks run on QEMU 10 from backports, added the way Debian
# documents it (https://backports.debian.org/Instructions/): a sources entry
# for bookworm-backports, then `apt-get install -t bookworm-backports`. The
# QMP driver still works with QEMU 7.2 (features are detected), so elsewhere
# an older QEMU is a warning, not an error.
QEMU_MIN_VERSION="1:10"
BACKPORTS_LIST="/etc/apt/sources.list.d/symbio-bookworm-backports.list"
qemu_version="$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)"
qemu_status="$(dpkg-query -W -f='${db:Status-Abbrev}' qemu-system-x86 2>/dev/null || true)"
[[ "$qemu_status" == ii* ]] || qemu_version=""
codename="$( (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || true)"
if ! command -v dpkg-query >/dev/null 2>&1; then
  :  # checked by command above
elif [[ -n "$qemu_version" ]] && dpkg --compare-versions "$qemu_version" ge "$QEMU_MIN_VERSION"; then
  note "QEMU $qemu_version"
elif [[ "$codename" == bookworm && "$(id -u)" == 0 ]]; then
  say "installing QEMU 10 from bookworm-backports${qemu_version:+ (found $qemu_version)}"
  export DEBIAN_FRONTEND=noninteractive
  if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$BACKPORTS_LIST"
  fi
  apt_log="$(mktemp "${TMPDIR:-/tmp}/symbio-apt.XXXXXX")"
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86; } \
       >"$apt_log" 2>&1 </dev/null; then
    tail -n 40 "$apt_log" >&2
    rm -f "$apt_log"
    die "apt-get install -t bookworm-backports qemu-system-x86 failed (its last lines are above)"
  fi
  rm -f "$apt_log"
elif [[ "$codename" == bookworm ]]; then
  say "QEMU 10 from bookworm-backports is needed${qemu_version:+ (found $qemu_version)}; as root run:"
  say "  echo 'deb http://deb.debian.org/debian bookworm-backports main' > $BACKPORTS_LIST"
  say "  apt-get update && apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-x86"
  exit 1
elif [[ -z "$qemu_version" ]]; then
  die "QEMU is missing: install qemu-system-x86 (version 10 or newer is recommended)"
else
  say "warning: QEMU $qemu_version is older than 10: precopy migration of TCG guests may corrupt them (docs/performance.md)"
fi

# --- b. npm dependencies ----------------------------------------------------------
if [[ -f package-lock.json ]]; then
  if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
    say "installing npm dependencies (npm ci)"
    npm ci --no-audit --no-fund >&2
  fi
elif [[ ! -d node_modules ]]; then
  say "installing npm dependencies (npm install)"
  npm install --no-audit --no-fund >&2
fi

# Is any file under the given paths newer than $1 (or $1 missing)?
stale() {
  local stamp="$1"; shift
  [[ -e "$stamp" ]] || return 0
  local paths=()
  for p in "$@"; do [[ -e "$p" ]] && paths+=("$p"); done
  ((${#paths[@]} > 0)) || return 1
  [[ -n "$(find "${paths[@]}" -newer "$stamp" \( -type f -o -type l \) -print -quit 2>/dev/null)" ]]
}

# --- c. native addon + shim -------------------------------------------------------
if [[ ! -f native/CMakeLists.txt ]]; then
  say "no native/CMakeLists.txt yet: skipping the native build"
elif [[ ! -f "$ADDON" || ! -f "$SHIM_LIB" ]] || stale "$NATIVE_STAMP" native; then
  say "building the native addon and the PMPI shim (npm run build:native)"
  npm run --silent build:native >&2
  for f in "$ADDON" "$SHIM_LIB"; do
    [[ -f "$f" ]] || die "the native build finished but did not produce $f"
  done
  touch "$NATIVE_STAMP"
else
  note "native build up to date"
fi

# --- d. MPI test programs ---------------------------------------------------------
if [[ -f scripts/build-mpi-programs.sh ]]; then
  bash scripts/build-mpi-programs.sh >&2
fi

# --- e. TypeScript ------------------------------------------------------------------
if stale "$TS_STAMP" "${TS_DIRS[@]}" tsconfig.json tsconfig.build.json; then
  say "compiling TypeScript (npm run build:ts)"
  npm run --silent build:ts >&2
  mkdir -p dist
  touch "$TS_STAMP"
else
  note "TypeScript build up to date"
fi
