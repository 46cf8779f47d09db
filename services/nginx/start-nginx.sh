#!/bin/sh
# nginx in its container, with one worker per CPU the container may use. `worker_processes auto`
# counts the host's CPUs: a 64-core host would start 64 workers (~7 MB each with 8,192
# connections) inside a 256 MB limit. The limit comes from cgroup v2's cpu.max or v1's CFS quota.
set -eu
workers=$(nproc)
quota=max
if [ -r /sys/fs/cgroup/cpu.max ]; then
    read -r quota period < /sys/fs/cgroup/cpu.max
elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
    period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
fi
if [ "$quota" != max ] && [ "$quota" -gt 0 ]; then
    limit=$(( (quota + period - 1) / period ))
    [ "$limit" -lt "$workers" ] && workers=$limit
fi
exec nginx -g "worker_processes $workers; daemon off;"
