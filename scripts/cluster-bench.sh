#!/usr/bin/env bash
# Cluster control-plane benchmarks (BENCHMARKS.md, issue 19): assignment time, moved fraction
# and balance per strategy (examples/assign_bench.rs), and leader failover, kill -9 -> every
# remaining agent acknowledged a new assignment (tests/agent_faults.rs bench_leader_failover:
# real etcd and agent processes, TTL 2 s; FERRY_BENCH_KILLS, default 10). Prints the load
# average with each result: the machine may be shared.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo run --release -q --example assign_bench
echo "load after assignment: $(cut -d' ' -f1-3 /proc/loadavg)"
if command -v etcd >/dev/null; then
  cargo test --release -q --test agent_faults bench_leader_failover -- --ignored --nocapture 2>&1 \
    | grep -E '^(failover|leader failover)'
else
  echo "failover: skipped (etcd is not installed: apt-get install etcd-server)"
fi
