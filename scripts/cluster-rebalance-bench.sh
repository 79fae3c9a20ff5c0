#!/usr/bin/env bash
# The cluster rebalance across nodes (issue 20), on `ferry demo --cluster`: etcd and 4 agents
# on loopback (disks under TMPDIR), objects loaded through their S3 endpoints, a fifth node
# added. Three parts:
#   speed   the rebalance's MB/s and objects/s (all nodes' moves, from the first node's start
#           to the last move, from their records in etcd) against `ferry copy` of the same
#           objects over the transport (the new node's disks pushed to a `ferry serve` on
#           ferry://127.0.0.1, TLS, same filesystem, timed through a sync); the scan rate per
#           node; a light client load (10 ops/s) and --user-p99 off, so nothing paces it
#   memory  peak RSS (VmHWM) of each agent with N small objects for each N of -M (flat in N?),
#           and each agent's RSS by phase (load/seed, baseline, rebalance, verify); a CSV of
#           its samples per count in -o DIR (t_s, node, phase, VmRSS, RssAnon, RssFile kB)
#   userio  user I/O first: the same client load (GET 90 %, PUT 10 % through the endpoints)
#           for a baseline without a rebalance, then during one, with the agents' adaptive
#           pace (--user-p99 default) and with it off; one CSV per run (t_s, phase, client
#           ops/s, client p99 ms, migration MB/s, pace limit MB/s) in -o DIR
#   knee    what the client's SLO leaves over: the same load and rebalance with the pace off
#           and a fixed rate per agent (`--rate`, each of -K), the client p99 and migration
#           MB/s at each; the fastest rate whose p99 stays <= 1.5x its baseline (and client
#           ops >= 80 %) is "the leftover"; a userio part after it in the same -p list also
#           reports the paced migration against that leftover
#
#   scripts/cluster-rebalance-bench.sh [-r RUNS] [-p PARTS] [-n OBJECTS] [-m MAX_SIZE]
#       [-M COUNTS] [-c CLIENT_OPS] [-K RATES] [-o CSV_DIR] [-S] [-F FS]
#     RUNS        runs per case, medians reported (default 3; cases alternate per run)
#     PARTS       comma list of speed, memory, userio, knee (default speed,memory,userio)
#     OBJECTS     objects loaded for speed and userio (default 4000; sizes skewed small)
#     MAX_SIZE    their largest size (default 1M)
#     COUNTS      object counts of the memory part (default 10000,100000; 4 KiB max each)
#     -S          the memory part seeds its objects onto the disks (`demo --cluster --seed`,
#                 at nice 19) instead of loading them through S3: 1M objects in minutes
#     CLIENT_OPS  the userio client load, ops/s (default 200)
#     RATES       the knee part's fixed rates per agent (default 4M,8M,16M,32M)
#     FS          where the nodes' disks and state dirs (and the copy's export) live: root (the
#                 default: under TMPDIR) or a fresh xfs, ext4 or ext4nj on a loop device over
#                 $WORK/fresh.img (WORK default /work/ferry-bench; root and xfsprogs needed),
#                 made anew for every demo run. Why: on this VM's root ext4 (no journal) every
#                 create rescans the inodes freed in the last 100 minutes (see bench.sh), and
#                 here the senders free theirs on the receiver's filesystem a moment before it
#                 creates its copies: a third of the receiver's CPU in perf. Real nodes do not
#                 share a filesystem, and storage nodes run XFS.
#   FERRY=BIN benchmarks another binary; FERRY_B=BIN adds a paired run of that binary (speed:
#   a "ferryB" line, alternating with FERRY in each run: before/after in the same run).
# Every line ends with the 1-minute load average: the machine may be shared with other
# work, read the numbers with it. Needs etcd, bc.
set -euo pipefail
RUNS=3; PARTS=speed,memory,userio; OBJECTS=4000; MAX=1M; COUNTS=10000,100000; OPS=200
OUT=; SEED=; RATES=4M,8M,16M,32M; FS=root
while getopts r:p:n:m:M:c:o:K:SF: o; do
  case $o in
    r) RUNS=$OPTARG ;; p) PARTS=$OPTARG ;; n) OBJECTS=$OPTARG ;; m) MAX=$OPTARG ;;
    M) COUNTS=$OPTARG ;; c) OPS=$OPTARG ;; o) OUT=$OPTARG ;; S) SEED=--seed ;; K) RATES=$OPTARG ;;
    F) FS=$OPTARG ;;
    *) sed -n '2,45p' "$0"; exit 2 ;;
  esac
done
FERRY=$(realpath "${FERRY:-$(dirname "$0")/../target/release/ferry}")
FERRY_B=${FERRY_B:+$(realpath "$FERRY_B")}
command -v etcd >/dev/null || { echo "cluster-rebalance-bench: etcd missing (apt-get install etcd-server)"; exit 2; }
command -v bc >/dev/null || { echo "cluster-rebalance-bench: bc missing"; exit 2; }
case $FS in
  root) ;;
  xfs|ext4|ext4nj)
    [ "$(id -u)" = 0 ] || { echo "cluster-rebalance-bench: -F $FS needs root (mount)"; exit 2; }
    [ "$FS" != xfs ] || command -v mkfs.xfs >/dev/null || { echo "cluster-rebalance-bench: mkfs.xfs missing (apt-get install xfsprogs)"; exit 2; }
    WORK=${WORK:-/work/ferry-bench}; mkdir -p "$WORK"
    . "$(dirname "$0")/fresh-fs.sh" ;;
  *) echo "cluster-rebalance-bench: -F root|xfs|ext4|ext4nj, not $FS"; exit 2 ;;
esac
W=$(mktemp -d "${TMPDIR:-/tmp}/ferry-rbbench.XXXXXX")
OUT=${OUT:-$W/csv}
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ "$FS" != root ]; then fresh_fs_off; fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
PORT=$((17950 + RANDOM % 40))

now() { date +%s.%N; }
load() { cut -d' ' -f1 /proc/loadavg; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR + 1) / 2)]; else print "-"}'; }
field() { sed -n "s/$1/\\1/p" "$2" | head -1; }  # $1 = a sed pattern with one group, $2 = file

# One demo run: $1 = binary, $2 = log file, then the demo's options. The demo's temp dir is
# kept (FERRY_DEMO_KEEP) under $W/demo and its path written to $2.dir. While it runs, the
# peak RSS of every agent is sampled into $2.rss (one "pid kB" line per agent, the last seen),
# and every sample into $2.ts (t_s,node,phase,VmRSS,RssAnon,RssFile kB; the phase from the log).
demo() {
  local bin=$1 log=$2; shift 2
  local base=$W/demo
  if [ "$FS" != root ]; then
    # room for the objects (sizes skewed small: a third of the largest each, at most), the
    # moved copies and the copy's export; inodes for them, their temps and the state dirs
    local objs max; objs=$(echo "$@" | sed -n 's/.*--objects \([0-9]*\).*/\1/p')
    max=$(numfmt --from=iec "$(echo "$@" | sed -n 's/.*--max-size \([0-9A-Za-z]*\).*/\1/p')")
    fresh_fs_on "$WORK/fresh.img" "$W/fs" "=$((objs * max / 3 + 268435456)):$((objs * 3 + 20000))" "$FS"
    base=$W/fs/demo
  fi
  rm -rf "$base"; mkdir -p "$base"
  TMPDIR="$base" FERRY_DEMO_KEEP=1 "$bin" demo --cluster "$@" >"$log" 2>&1 &
  local d=$!; PIDS+=("$d")
  declare -A hwm=()
  local t0; t0=$(now)
  echo "t_s,node,phase,vmrss_kb,rss_anon_kb,rss_file_kb" >"$log.ts"
  while kill -0 "$d" 2>/dev/null; do
    local ph=load t; t=$(echo "$(now) - $t0" | bc)
    grep -q '^client load:' "$log" && ph=baseline
    grep -q '^adding node' "$log" && ph=rebalance
    grep -q '^moved ' "$log" && ph=verify
    for c in $(cat /proc/$d/task/*/children 2>/dev/null); do
      grep -qa -- '--peer-listen' "/proc/$c/cmdline" 2>/dev/null || continue
      local st; st=$(cat "/proc/$c/status" 2>/dev/null) || continue
      local k; k=$(echo "$st" | awk '/VmHWM/ {print $2}')
      [ -n "$k" ] && hwm[$c]=$k
      local node; node=$(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null | sed -n 's/.*--node \([^ ]*\).*/\1/p')
      echo "$st" | awk -v t="$t" -v n="$node" -v p="$ph" \
        '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {if (r && n != "") printf "%.1f,%s,%s,%d,%d,%d\n", t, n, p, r, a, f}' >>"$log.ts"
    done
    sleep 0.3
  done
  local rc=0; wait "$d" || rc=$?
  for c in "${!hwm[@]}"; do echo "$c ${hwm[$c]}"; done >"$log.rss"
  ls -d "$base"/ferry-cluster-demo-* >"$log.dir" 2>/dev/null || true
  [ $rc -eq 0 ] || { echo "demo failed (exit $rc), log:"; tail -20 "$log"; return 1; }
}

# The rebalance line of a demo log: "MB/s objects/s MB objects seconds".
rebal() {
  sed -n 's/^rebalance: \([0-9]*\) objects, \([0-9.]*\) MB in \([0-9.]*\) s .*: \([0-9.]*\) MB\/s, \([0-9]*\) objects\/s$/\4 \5 \2 \1 \3/p' "$1"
}

# ferry copy of the new node's disks (what the rebalance moved there) to a ferry serve on
# loopback, timed through a sync: "MB/s objects/s MB objects".
copy_moved() {
  local bin=$1 dir; dir=$(cat "$2.dir")
  [ -d "$W/ca" ] || { "$FERRY" certs init "$W/ca" >/dev/null 2>&1;
    for n in 127.0.0.1 client; do "$FERRY" certs issue "$W/ca" $n >/dev/null 2>&1; done; }
  local exp; exp=$(dirname "$dir")/exp # beside the demo's disks: the same filesystem
  rm -rf "$exp" "$W/cstate"; mkdir -p "$exp"
  local src=("$dir/disks/n5a" "$dir/disks/n5b")
  local files bytes
  files=$(find "${src[@]}" -type f ! -name '.ferry-*' | wc -l)
  bytes=$(find "${src[@]}" -type f ! -name '.ferry-*' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  "$bin" serve --listen 127.0.0.1:$PORT --export data="$exp" --tls-dir "$W/ca/127.0.0.1" \
    --state-dir "$W/serve-state" 2>>"$W/serve.log" &
  local s=$!; PIDS+=("$s"); sleep 0.5
  sync
  local t0 t1; t0=$(now)
  "$bin" copy -q "${src[@]}" "ferry://127.0.0.1:$PORT/data/" --tls-dir "$W/ca/client" \
    --state-dir "$W/cstate" --fresh >/dev/null
  sync -f "$exp"
  t1=$(now)
  kill "$s" 2>/dev/null || true; wait "$s" 2>/dev/null || true
  local secs; secs=$(echo "$t1 - $t0" | bc)
  echo "$(echo "$bytes / 1000000 / $secs" | bc -l) $(echo "$files / $secs" | bc -l) $(echo "$bytes / 1000000" | bc -l) $files"
}

part_speed() {
  local tools=(ferry) bins=("$FERRY")
  [ -n "$FERRY_B" ] && { tools+=(ferryB); bins+=("$FERRY_B"); }
  echo "== speed: $OBJECTS objects up to $MAX, 4 -> 5 agents, --user-p99 off, 10 client ops/s, $RUNS runs"
  for r in $(seq 1 "$RUNS"); do
    local i
    for i in "${!tools[@]}"; do
      local t=${tools[$i]} log="$W/speed-${tools[$i]}-$r.log"
      demo "${bins[$i]}" "$log" --objects "$OBJECTS" --max-size "$MAX" --client-ops 10 \
        --baseline 1 --user-p99 off || { echo "  run $r $t skipped (the demo failed)"; continue; }
      local rb cp; rb=$(rebal "$log"); cp=$(copy_moved "${bins[$i]}" "$log")
      echo "$rb" >>"$W/rb-$t"; echo "$cp" >>"$W/cp-$t"
      grep '^node n[1-4]:' "$log" | sed -n 's/.*(\([0-9]*\) objects\/s);.*/\1/p' >>"$W/scan-$t"
      printf '  run %d %-6s rebalance %6.1f MB/s %5.0f obj/s (%s MB, %s objects) | ferry copy %6.1f MB/s %5.0f obj/s (%.1f MB, %s objects) | %3.0f %% | load %s\n' \
        "$r" "$t" $(echo "$rb" | cut -d' ' -f1-4) $(echo "$cp" | cut -d' ' -f1-4) \
        "$(echo "100 * $(echo "$rb" | cut -d' ' -f1) / $(echo "$cp" | cut -d' ' -f1)" | bc -l)" "$(load)"
    done
  done
  for t in "${tools[@]}"; do
    local m c; m=$(cut -d' ' -f1 "$W/rb-$t" | median); c=$(cut -d' ' -f1 "$W/cp-$t" | median)
    printf 'speed %-6s median: rebalance %.1f MB/s, %.0f objects/s; ferry copy of the moved objects %.1f MB/s, %.0f objects/s; rebalance/copy %.0f %% (target >= 90 %%); scan per node median %s objects/s | load %s\n' \
      "$t" "$m" "$(cut -d' ' -f2 "$W/rb-$t" | median)" "$c" "$(cut -d' ' -f2 "$W/cp-$t" | median)" \
      "$(echo "100 * $m / $c" | bc -l)" "$(median <"$W/scan-$t")" "$(load)"
  done
}

part_memory() {
  echo "== memory: peak RSS per agent (VmHWM, sampled every 0.3 s), objects up to 4K, --user-p99 off${SEED:+, seeded onto the disks}"
  local n
  for n in ${COUNTS//,/ }; do
    local log="$W/mem-$n.log" t0; t0=$(now)
    demo "$FERRY" "$log" --objects "$n" --max-size 4K --client-ops 10 --baseline 1 \
      --user-p99 off --timeout 3000 $SEED || { echo "memory $n skipped (the demo failed)"; continue; }
    cp "$log.ts" "$OUT/mem-$n.csv"
    local ph
    for ph in load baseline rebalance verify; do
      local line; line=$(awk -F, -v p=$ph 'NR > 1 && $3 == p && $4 > r[$2] {r[$2] = $4; a[$2] = $5; f[$2] = $6}
        END {for (n in r) printf "%s %.1f/%.1f/%.1f\n", n, r[n] / 1024, a[n] / 1024, f[n] / 1024}' "$log.ts" | sort | tr '\n' ' ')
      if [ -n "$line" ]; then echo "  $ph: max RSS/anon/file MB per agent: $line"; fi
    done
    local kb; kb=$(awk '{print $2}' "$log.rss" | sort -n | tr '\n' ' ')
    printf 'memory %8d objects: agents peak RSS %s kB (max %s MB); %s | %s s | load %s\n' "$n" "$kb" \
      "$(awk '{if ($2 > m) m = $2} END {printf "%.1f", m / 1024}' "$log.rss")" \
      "$(rebal "$log" | awk '{printf "rebalance %.1f MB/s, %d objects/s", $1, $2}')" \
      "$(echo "$(now) - $t0" | bc | cut -d. -f1)" "$(load)"
  done
}

# From a demo CSV ($1) and phase ($2): "ops/s p99_ms migration_MB/s" as medians of its
# per-second rows (the rebalance's rows only while it moves: migration > 0).
csv_phase() {
  awk -F, -v ph="$2" 'NR > 1 && $2 == ph && (ph == "baseline" || $5 > 0) {print $3, $4, $5}' "$1" >"$W/rows"
  echo "$(cut -d' ' -f1 "$W/rows" | median) $(cut -d' ' -f2 "$W/rows" | median) $(cut -d' ' -f3 "$W/rows" | median)"
}

# One client-load run of userio/knee: $1 = label, $2 = run, then the demo's options; appends
# "label base_ops base_p99 during_ops during_p99 migration" to $W/userio and prints the run.
userio_run() {
  local label=$1 r=$2; shift 2
  local log="$W/userio-$label-$r.log" csv="$OUT/userio-$label-$r.csv"
  demo "$FERRY" "$log" --objects "$OBJECTS" --max-size "$MAX" --client-ops "$OPS" \
    --baseline 20 --csv "$csv" "$@" || { echo "  run $r $label skipped (the demo failed)"; return 0; }
  local b d; b=$(csv_phase "$csv" baseline); d=$(csv_phase "$csv" rebalance)
  set -- $b $d
  echo "$label $1 $2 $4 $5 $6" >>"$W/userio"
  printf '  run %d %-8s baseline %6.1f ops/s p99 %6.2f ms | during %6.1f ops/s (%3.0f %%) p99 %6.2f ms (%.2fx) migration %6.1f MB/s | overall p99 %s | load %s\n' \
    "$r" "$label" "$1" "$2" "$4" "$(echo "100 * $4 / $1" | bc -l)" "$5" "$(echo "$5 / $2" | bc -l)" "$6" \
    "$(sed -n 's/^client rebalance: .*p99 \([0-9.]*\) ms.*/\1 ms/p' "$log")" "$(load)"
}

# The medians of one label's runs in $W/userio: "base_ops base_p99 during_ops during_p99 migration".
userio_medians() {
  local k out=
  for k in 2 3 4 5 6; do out="$out $(awk -v m="$1" -v k=$k '$1 == m {print $k}' "$W/userio" | median)"; done
  echo $out
}

part_userio() {
  echo "== user I/O first: $OPS client ops/s (4 threads; GET 90 %, PUT 10 %), 20 s baseline, then the rebalance; $OBJECTS objects up to $MAX"
  local r
  for r in $(seq 1 "$RUNS"); do
    userio_run pace "$r"
    userio_run off "$r" --user-p99 off
  done
  local m off knee=; off=$(userio_medians off | cut -d' ' -f5)
  [ -s "$W/knee" ] && knee=$(cat "$W/knee")
  for m in pace off; do
    set -- $(userio_medians $m)
    printf 'userio %-4s median: client during/without %.0f %% (target >= 80), p99 %.2f/%.2f ms = %.2fx (target <= 1.5), migration %.1f MB/s = %.0f %% of the unpaced run'"'"'s %.1f%s (target >= 70) | load %s\n' \
      $m "$(echo "100 * $3 / $1" | bc -l)" "$4" "$2" "$(echo "$4 / $2" | bc -l)" "$5" \
      "$(echo "100 * $5 / $off" | bc -l)" "$off" \
      "${knee:+, $(echo "100 * $5 / $knee" | bc -l | cut -d. -f1) % of the leftover under the SLO ($knee MB/s)}" "$(load)"
  done
  echo "CSVs: $OUT"
}

# The leftover: the fastest fixed rate's migration whose client stays within the SLO
# (p99 <= 1.5x its baseline, ops >= 80 %), medians of RUNS runs per rate.
part_knee() {
  echo "== knee: $OPS client ops/s, the pace off, fixed rates per agent $RATES; $OBJECTS objects up to $MAX"
  local r rate best=0
  for r in $(seq 1 "$RUNS"); do
    for rate in ${RATES//,/ }; do userio_run "rate$rate" "$r" --user-p99 off --rate "$rate"; done
  done
  for rate in ${RATES//,/ }; do
    set -- $(userio_medians "rate$rate")
    local ok=no
    if [ "$(echo "$4 <= 1.5 * $2 && $3 >= 0.8 * $1" | bc -l)" = 1 ]; then
      ok=yes; [ "$(echo "$5 > $best" | bc -l)" = 1 ] && best=$5
    fi
    printf 'knee rate %-5s median: client %.0f %%, p99 %.2f/%.2f ms = %.2fx, migration %.1f MB/s, within the SLO: %s | load %s\n' \
      "$rate" "$(echo "100 * $3 / $1" | bc -l)" "$4" "$2" "$(echo "$4 / $2" | bc -l)" "$5" $ok "$(load)"
  done
  echo "knee: the leftover under the SLO (the fastest fixed rate within it): $best MB/s"
  [ "$best" = 0 ] || echo "$best" >"$W/knee"
}

echo "cluster-rebalance-bench: $(nproc) CPUs, $(uname -r), disks on $FS, load $(cut -d' ' -f1-3 /proc/loadavg) (the machine may be shared)"
for p in ${PARTS//,/ }; do "part_$p"; done
