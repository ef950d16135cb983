#!/usr/bin/env bash
# Make sure the Slurm + munge binaries that the Slurm integration tests use are
# installed (Debian packages, Slurm 22.05 on bookworm). Idempotent and quiet:
# prints at most one line on success. It never fails the caller: where it
# cannot install (not root, no apt-get, apt error) it says why on stderr and
# exits 0, so tests that need Slurm skip themselves instead of CI breaking.
set -u

# The daemons live in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
need=(sbatch squeue scontrol sinfo slurmctld slurmd munged)
missing() { for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || return 0; done; return 1; }

missing || exit 0

if [ "$EUID" != 0 ]; then
    echo "ensure_slurm: slurm/munge missing and not root; Slurm tests will be skipped" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_slurm: slurm/munge missing and no apt-get; Slurm tests will be skipped" >&2
    exit 0
fi

log=$(mktemp /tmp/ensure_slurm.XXXXXX.log)
# A policy-rc.d that exits 101 tells invoke-rc.d not to start the packages'
# system daemons (test_slurm.sh starts private ones); remember and restore
# whatever policy the machine already had (containers often ship one).
policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; fi
printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
restore() { if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi; }
trap restore EXIT

# --no-install-recommends: the recommends pull ~40 plugin/-dev packages that
# the tests never load; slurm-wlm-basic-plugins (a hard dependency) has them all.
export DEBIAN_FRONTEND=noninteractive
pkgs=(slurmctld slurmd slurm-client munge)
if apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$log" 2>&1 ||
   { apt-get update -q >>"$log" 2>&1 &&
     apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$log" 2>&1; }; then
    rm -f "$log"
    echo "ensure_slurm: installed ${pkgs[*]}"
else
    echo "ensure_slurm: apt-get install ${pkgs[*]} failed (log: $log); Slurm tests will be skipped" >&2
fi
exit 0
