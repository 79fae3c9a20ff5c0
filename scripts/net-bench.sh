#!/usr/bin/env bash
# ferry over loopback against the raw TCP ceiling (iperf3) and `tar | nc`, on tmpfs (so the
# disks are out of the picture and what is left is the network path: TLS, framing, the
# receiver's temp/commit/rename work).
#   scripts/net-bench.sh [RUNS]      (default 3; same-run medians, alternating tools)
# Shapes: large (one 1 GiB file), small (20,000 files of 4 KiB). Needs iperf3 and nc
# (netcat-openbsd); FERRY=BIN benchmarks a given binary. Reports wall seconds, MB/s, files/s,
# and the CPU seconds of both ferry ends (from /proc).
set -euo pipefail
RUNS=${1:-3}
FERRY=${FERRY:-$(dirname "$0")/../target/release/ferry}
for t in iperf3 nc; do command -v $t >/dev/null || { echo "net-bench: $t missing (apt-get install iperf3 netcat-openbsd)"; exit 2; }; done
W=$(mktemp -d /dev/shm/ferry-netbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
PORT=17900; NCPORT=17901; IPORT=17902

"$FERRY" certs init "$W/ca" 2>/dev/null
"$FERRY" certs issue "$W/ca" localhost 2>/dev/null
"$FERRY" certs issue "$W/ca" client 2>/dev/null
mkdir -p "$W/large" "$W/small" "$W/exp"
head -c $((1 << 30)) /dev/urandom > "$W/large/big"
python3 - "$W/small" <<'EOF'
import os, sys
d = sys.argv[1]
for i in range(20000):
    sub = os.path.join(d, "d%03d" % (i // 1000))
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, "f%05d" % i), "wb") as f:
        f.write(os.urandom(4096))
EOF

"$FERRY" serve --listen 127.0.0.1:$PORT --export data="$W/exp" --tls-dir "$W/ca/localhost" 2>"$W/serve.log" &
SERVER=$!; PIDS+=("$SERVER")
iperf3 -s -p $IPORT -D --logfile "$W/iperf.log"; sleep 0.5
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
now() { date +%s.%N; }

echo "ceiling: iperf3 loopback, 5 s"
iperf3 -c 127.0.0.1 -p $IPORT -t 5 -f m | awk '/receiver/ {print "  iperf3: " $7 " Mbit/s"}'

run_tar() {  # $1 = shape
  rm -rf "$W/exp/t"; mkdir -p "$W/exp/t"
  local t0; t0=$(now)
  (nc -l 127.0.0.1 $NCPORT | tar -C "$W/exp/t" -xf -) &
  local rx=$!; sleep 0.2
  tar -C "$W/$1" -cf - . | nc -q 0 127.0.0.1 $NCPORT
  wait $rx; sync -f "$W/exp"
  echo "$(now) - $t0 - 0.2" | bc
}

run_ferry() {  # $1 = shape; prints wall seconds and both ends' CPU seconds
  rm -rf "$W/exp/$1"
  local s0 t0 c; s0=$(cpu $SERVER); t0=$(now)
  c=$( { /usr/bin/env time -f "%U %S" "$FERRY" copy -q "$W/$1" ferry://localhost:$PORT/data/ \
        --tls-dir "$W/ca/client" --state-dir "$W/state" --fresh >/dev/null; } 2>&1 | tail -1)
  local t1; t1=$(now)
  echo "$(echo "$t1 - $t0" | bc) $(echo "$(cpu $SERVER) - $s0" | bc) $(echo "$c" | awk '{print $1 + $2}')"
}

command -v time >/dev/null || [ -x /usr/bin/time ] || { echo "net-bench: /usr/bin/time missing (apt-get install time)"; exit 2; }
for shape in large small; do
  : > "$W/tar.$shape"; : > "$W/ferry.$shape"
  for _ in $(seq "$RUNS"); do
    run_tar $shape >> "$W/tar.$shape"
    run_ferry $shape >> "$W/ferry.$shape"
  done
  bytes=$(du -sb "$W/$shape" | cut -f1); files=$(find "$W/$shape" -type f | wc -l)
  tt=$(median < "$W/tar.$shape"); ft=$(cut -d' ' -f1 "$W/ferry.$shape" | median)
  fs=$(cut -d' ' -f2 "$W/ferry.$shape" | median); fc=$(cut -d' ' -f3 "$W/ferry.$shape" | median)
  gb=$(echo "$bytes / 1000000000" | bc -l)
  printf '%s (%s files, %s bytes), medians of %s:\n' $shape "$files" "$bytes" "$RUNS"
  printf '  tar | nc : %6.2f s  %8.1f MB/s  %8.0f files/s\n' "$tt" "$(echo "$bytes / $tt / 1000000" | bc -l)" "$(echo "$files / $tt" | bc -l)"
  printf '  ferry    : %6.2f s  %8.1f MB/s  %8.0f files/s  (TLS 1.3, durable, xxh3 both ends)\n' "$ft" "$(echo "$bytes / $ft / 1000000" | bc -l)" "$(echo "$files / $ft" | bc -l)"
  printf '  ferry CPU s/GB: receiver %.2f, sender %.2f\n' "$(echo "$fs / $gb" | bc -l)" "$(echo "$fc / $gb" | bc -l)"
done
