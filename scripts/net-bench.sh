#!/usr/bin/env bash
# ferry over the network against the raw TCP ceiling (iperf3), `tar | nc` and `rsync --daemon`,
# on loopback and on a veth pair between two network namespaces shaped with tc tbf (1 Gbit/s
# and 10 Gbit/s). Data on tmpfs (/dev/shm), so the disks are out of the picture and what is
# left is the network path (TLS, framing, the receiver's temp/commit/rename work).
#
#   scripts/net-bench.sh [-r RUNS] [-l LINKS] [-s SHAPES] [-S STREAMS] [-t TOOLS]
#     RUNS     runs per tool and case, medians reported (default 3; tools alternate per run)
#     LINKS    comma list of lo, veth1g, veth10g (default all three; veth needs root, ip, tc)
#     SHAPES   comma list of large (one 512 MiB file), mixed (2000 files of 1 KiB-4 MiB and
#              four of 40 MiB), small (20,000 files of 4 KiB) (default all three)
#     STREAMS  ferry's --streams for the ferry-sN line (default: the online CPUs)
#     TOOLS    comma list of tar, rsync, ferry1, ferryN, ferryB (default all but ferryB;
#              ferryB is FERRY_B=BIN with --streams N, for a paired before/after)
#   FERRY=BIN benchmarks another binary.
# One line per link, shape and tool: median wall seconds, MB/s, files/s, the share of the
# link's iperf3 ceiling (one TCP stream, 5 s), the CPU seconds per GB of both ends (the
# receiving and sending processes and their children), for ferry the receiver's peak RSS
# (VmHWM of its own `ferry serve`), and the 1-minute load average at the end of the case (the
# machine may be shared: read the numbers with it). Every file is on tmpfs; every tool's
# wall time ends with a `sync -f` of the destination. Needs iperf3, nc (netcat-openbsd),
# rsync, bc and GNU time.
set -euo pipefail
. "$(dirname "$0")/netns-link.sh"
RUNS=3; LINKS=lo,veth1g,veth10g; SHAPES=large,mixed,small; STREAMS=$(nproc)
TOOLS=tar,rsync,ferry1,ferryN
while getopts r:l:s:S:t: o; do
  case $o in
    r) RUNS=$OPTARG ;; l) LINKS=$OPTARG ;; s) SHAPES=$OPTARG ;; S) STREAMS=$OPTARG ;;
    t) TOOLS=$OPTARG ;;
    *) sed -n '2,24p' "$0"; exit 2 ;;
  esac
done
FERRY=$(realpath "${FERRY:-$(dirname "$0")/../target/release/ferry}")
FERRY_B=${FERRY_B:+$(realpath "$FERRY_B")}
for t in iperf3 nc rsync bc; do
  command -v $t >/dev/null || { echo "net-bench: $t missing (apt-get install iperf3 netcat-openbsd rsync bc)"; exit 2; }
done
[ -x /usr/bin/time ] || { echo "net-bench: /usr/bin/time missing (apt-get install time)"; exit 2; }
case ",$TOOLS," in *,ferryB,*) [ -n "$FERRY_B" ] || { echo "net-bench: ferryB needs FERRY_B=BIN"; exit 2; } ;; esac
W=$(mktemp -d /dev/shm/ferry-netbench.XXXXXX)
NS_A=fybench-a$$; NS_B=fybench-b$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/iperf.pid" ] && kill "$(cat "$W/iperf.pid")" 2>/dev/null || true
  ip netns del $NS_A 2>/dev/null || true; ip netns del $NS_B 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
PORT=17900; NCPORT=17901; IPORT=17902; RPORT=17903

now() { date +%s.%N; }
load() { cut -d' ' -f1 /proc/loadavg; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
# CPU seconds of a process, its threads and its reaped children.
cpu() { awk '{print ($14 + $15 + $16 + $17) / 100}' "/proc/$1/stat"; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
utime() { awk '{print $1 + $2}' "$1"; }  # a /usr/bin/time -f "%U %S" output file

# --- data ------------------------------------------------------------------------------------
mkdir -p "$W/src" "$W/exp"
python3 - "$W/src" "$SHAPES" <<'EOF'
import os, random, sys
root, shapes = sys.argv[1], sys.argv[2].split(",")
rnd = random.Random(7)
def put(p, n):
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        while n > 0:
            k = min(n, 1 << 20); f.write(os.urandom(k)); n -= k
if "large" in shapes:
    put(f"{root}/large/big", 512 << 20)
if "mixed" in shapes:
    for i in range(2000):
        put(f"{root}/mixed/d{i % 20:02}/f{i:05}", int(2 ** rnd.uniform(10, 22)))
    for i in range(4):
        put(f"{root}/mixed/big{i}", 40 << 20)
if "small" in shapes:
    for i in range(20000):
        put(f"{root}/small/d{i // 1000:03}/f{i:05}", 4096)
EOF
"$FERRY" certs init "$W/ca" >/dev/null 2>&1
for n in 127.0.0.1 10.202.0.1 client; do "$FERRY" certs issue "$W/ca" $n >/dev/null 2>&1; done
cat > "$W/rsyncd.conf" <<EOF
use chroot = no
[data]
path = $W/exp
read only = false
uid = root
gid = root
EOF

# --- links -----------------------------------------------------------------------------------
# IN_A / IN_B: how a command runs on the receiving / sending side of the link.
setup_link() { netns_link "$1" $NS_A $NS_B 10.202.0 vf; }  # $1 = lo | veth1g | veth10g

ceiling() {  # Mbit/s of one TCP stream, 5 s
  rm -f "$W/iperf.pid"
  $IN_A iperf3 -s -B $ADDR -p $IPORT -D -I "$W/iperf.pid" --logfile "$W/iperf.log"; sleep 0.5
  $IN_B iperf3 -c $ADDR -p $IPORT -t 5 -f m | awk '/receiver/ {print $7}'
  kill "$(cat "$W/iperf.pid")" 2>/dev/null || true; sleep 0.2
}

# --- tools (each prints: wall_s receiver_cpu_s sender_cpu_s) -----------------------------------
run_tar() {
  rm -rf "$W/exp/t"; mkdir -p "$W/exp/t"
  $IN_A /usr/bin/time -f "%U %S" -o "$W/rx.time" \
    sh -c "nc -d -l $ADDR $NCPORT | tar -C '$W/exp/t' -xf -" &
  local rx=$! t0; sleep 0.3
  t0=$(now)
  $IN_B /usr/bin/time -f "%U %S" -o "$W/tx.time" \
    sh -c "tar -C '$W/src/$1' -cf - . | nc -N $ADDR $NCPORT"
  wait $rx; sync -f "$W/exp"
  echo "$(echo "$(now) - $t0" | bc) $(utime "$W/rx.time") $(utime "$W/tx.time")"
}

run_rsync() {
  rm -rf "$W/exp/r"
  local t0 c0; c0=$(cpu $RSYNCD); t0=$(now)
  $IN_B /usr/bin/time -f "%U %S" -o "$W/tx.time" rsync -a "$W/src/$1/" "rsync://$ADDR:$RPORT/data/r/"
  sync -f "$W/exp"
  local t1; t1=$(now)
  sleep 0.1 # the daemon reaps its child
  echo "$(echo "$t1 - $t0" | bc) $(echo "$(cpu $RSYNCD) - $c0" | bc) $(utime "$W/tx.time")"
}

run_ferry() {  # $1 = shape, $2 = streams, $3 = binary, $4 = its server's pid, $5 its port
  rm -rf "$W/exp/$1"
  local c0 t0; c0=$(cpu "$4"); t0=$(now)
  $IN_B /usr/bin/time -f "%U %S" -o "$W/tx.time" "$3" copy -q --streams "$2" "$W/src/$1" \
    "ferry://$ADDR:$5/data/" --tls-dir "$W/ca/client" --state-dir "$W/state" --fresh >/dev/null
  sync -f "$W/exp"
  local t1; t1=$(now)
  echo "$(echo "$t1 - $t0" | bc) $(echo "$(cpu "$4") - $c0" | bc) $(utime "$W/tx.time")"
}

# A ferry server per ferry tool (so each has its own peak RSS): $1 = binary, $2 = port.
start_ferry() {
  $IN_A "$1" serve --listen $ADDR:$2 --export data="$W/exp" --tls-dir "$W/ca/$ADDR" \
    --state-dir "$W/serve-state" 2>>"$W/serve.log" &
  FPID=$!; PIDS+=("$FPID")
}

start_servers() {
  start_ferry "$FERRY" $PORT; S1=$FPID
  start_ferry "$FERRY" $((PORT + 10)); SN=$FPID
  SB=
  if [ -n "$FERRY_B" ]; then start_ferry "$FERRY_B" $((PORT + 20)); SB=$FPID; fi
  $IN_A rsync --daemon --no-detach --config="$W/rsyncd.conf" --port=$RPORT --address=$ADDR &
  RSYNCD=$!; PIDS+=("$RSYNCD")
  sleep 0.5
}

stop_servers() {
  local p
  for p in $S1 $SN $SB $RSYNCD; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

run_tool() {  # $1 tool, $2 shape
  case $1 in
    tar) run_tar "$2" ;;
    rsync) run_rsync "$2" ;;
    ferry1) run_ferry "$2" 1 "$FERRY" $S1 $PORT ;;
    ferryN) run_ferry "$2" "$STREAMS" "$FERRY" $SN $((PORT + 10)) ;;
    ferryB) run_ferry "$2" "$STREAMS" "$FERRY_B" $SB $((PORT + 20)) ;;
  esac
}

label() {
  case $1 in
    tar) echo "tar|nc" ;; rsync) echo "rsyncd" ;; ferry1) echo "ferry-s1" ;;
    ferryN) echo "ferry-s$STREAMS" ;; ferryB) echo "ferryB-s$STREAMS" ;;
  esac
}

report() {  # $1 link, $2 shape, $3 tool, $4 ceiling Mbit/s, $5 receiver pid (ferry) or ""
  local f="$W/r.$3" bytes files t mbs gb
  bytes=$(du -sb "$W/src/$2" | cut -f1); files=$(find "$W/src/$2" -type f | wc -l)
  t=$(cut -d' ' -f1 "$f" | median)
  mbs=$(echo "$bytes / $t / 1000000" | bc -l)
  gb=$(echo "$bytes / 1000000000" | bc -l)
  printf '%-8s %-6s %-10s %7.2f s %7.1f MB/s %7.0f files/s %5.1f %% of iperf3' \
    "$1" "$2" "$(label "$3")" "$t" "$mbs" "$(echo "$files / $t" | bc -l)" \
    "$(echo "$mbs * 800 / $4" | bc -l)"
  printf '  CPU s/GB rx %5.2f tx %5.2f' \
    "$(echo "$(cut -d' ' -f2 "$f" | median) / $gb" | bc -l)" \
    "$(echo "$(cut -d' ' -f3 "$f" | median) / $gb" | bc -l)"
  [ -n "$5" ] && printf '  rx peak RSS %4d MiB' "$(( $(hwm "$5") / 1024 ))"
  printf '  runs %s  load %s\n' "$(cut -d' ' -f1 "$f" | tr '\n' ' ' | sed 's/ $//')" "$(load)"
}

echo "net-bench: $(nproc) CPUs, tools $TOOLS, ferry-sN --streams $STREAMS, $RUNS runs, load $(load)"
for link in ${LINKS//,/ }; do
  setup_link "$link"
  ceil=$(ceiling)
  printf '%-8s iperf3 (one TCP stream, 5 s): %s Mbit/s  load %s\n' "$link" "$ceil" "$(load)"
  for shape in ${SHAPES//,/ }; do
    start_servers
    for tool in ${TOOLS//,/ }; do : > "$W/r.$tool"; done
    for _ in $(seq "$RUNS"); do
      for tool in ${TOOLS//,/ }; do run_tool $tool "$shape" >> "$W/r.$tool"; done
    done
    for tool in ${TOOLS//,/ }; do
      case $tool in
        ferry1) rx=$S1 ;; ferryN) rx=$SN ;; ferryB) rx=$SB ;; *) rx= ;;
      esac
      report "$link" "$shape" $tool "$ceil" "$rx"
    done
    stop_servers
  done
done
