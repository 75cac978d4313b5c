#!/usr/bin/env bash
# Build every MPI C program of the repo (examples/, test/mpi/, bench/mpi/)
# into build/mpi/<name>. Tests and benchmarks call this before they run
# anything, so it must be cheap when nothing changed: a binary newer than its
# source and than every header (*.h) in its source's directory is skipped.
# (Those headers are what `#include "..."` finds first: test/mpi/mpitest.h is
# shared by all of test/mpi/*.c, so changing it rebuilds them all.)
#
# Environment: MPICC (default mpicc), CFLAGS (default below), FORCE=1 rebuilds
# everything.
set -euo pipefail

# Resolve the repo root from this script's own location so the script works
# from any working directory and any checkout path.
script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd -- "$script_dir/.." && pwd)

mpicc=${MPICC:-mpicc}
cflags=${CFLAGS:--std=c11 -O2 -Wall -Wextra}
out_dir="$root/build/mpi"

if ! command -v "$mpicc" >/dev/null 2>&1; then
    echo "build-mpi-programs: '$mpicc' not found (install Open MPI's mpicc or set MPICC)" >&2
    exit 1
fi

mkdir -p "$out_dir"

built=0
skipped=0
failed=0
seen=" " # names built so far, space-separated (no bash-4 arrays: macOS)

# up_to_date BIN FILE...: BIN exists and is newer than every FILE that exists
# (a header glob that matched nothing stays a literal pattern: skipped).
up_to_date() {
    local bin=$1 dep
    shift
    [ -x "$bin" ] || return 1
    for dep in "$@"; do
        [ -e "$dep" ] || continue
        [ "$bin" -nt "$dep" ] || return 1
    done
}

for dir in examples test/mpi bench/mpi; do
    [ -d "$root/$dir" ] || continue
    for src in "$root/$dir"/*.c; do
        [ -e "$src" ] || continue # the glob matched nothing
        name=$(basename -- "$src" .c)
        # All binaries share one directory, so a name may exist only once.
        case "$seen" in
        *" $name "*)
            echo "build-mpi-programs: $dir/$name.c: another directory has a $name.c" >&2
            failed=$((failed + 1))
            continue
            ;;
        esac
        seen="$seen$name "
        bin="$out_dir/$name"
        if [ "${FORCE:-0}" != 1 ] && up_to_date "$bin" "$src" "$root/$dir"/*.h; then
            skipped=$((skipped + 1))
            continue
        fi
        echo "build-mpi-programs: $dir/$name.c -> build/mpi/$name"
        # shellcheck disable=SC2086 # cflags is a list of words on purpose
        if "$mpicc" $cflags -o "$bin.tmp" "$src" -lm; then
            # Rename so an interrupted build never leaves a fresh-looking binary.
            mv -f "$bin.tmp" "$bin"
            built=$((built + 1))
        else
            rm -f "$bin.tmp"
            echo "build-mpi-programs: FAILED to compile $dir/$name.c" >&2
            failed=$((failed + 1))
        fi
    done
done

echo "build-mpi-programs: $built built, $skipped up to date, $failed failed"
[ "$failed" -eq 0 ]
