#!/usr/bin/env bash
# Where ferry's CPU goes over the network: one push of a shape over a veth pair between two
# network namespaces shaped with tc tbf (or loopback), with `perf record -e cpu-clock -g` on
# both ends (the receiving `ferry serve` and the sending `ferry copy`), then each side's top
# entries by self time (`perf report --no-children --sort dso,sym`). Data on tmpfs.
#
#   scripts/net-profile.sh [-l lo|veth1g|veth10g] [-s large|small] [-S STREAMS] [-n TOP]
#   FERRY=BIN profiles another binary; OUT=DIR keeps perf.data and the reports there.
# Needs root (netns), perf, ip, tc.
set -euo pipefail
. "$(dirname "$0")/netns-link.sh"
LINK=veth10g; SHAPE=large; STREAMS=$(nproc); TOP=25
while getopts l:s:S:n: o; do
  case $o in
    l) LINK=$OPTARG ;; s) SHAPE=$OPTARG ;; S) STREAMS=$OPTARG ;; n) TOP=$OPTARG ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
  esac
done
FERRY=$(realpath "${FERRY:-$(dirname "$0")/../target/release/ferry}")
W=$(mktemp -d /dev/shm/ferry-netprof.XXXXXX)
OUT=${OUT:-$W/out}; mkdir -p "$OUT"
NS_A=fyprof-a$$; NS_B=fyprof-b$$; SPID=
cleanup() {
  [ -n "$SPID" ] && kill -INT "$SPID" 2>/dev/null || true
  ip netns del $NS_A 2>/dev/null || true; ip netns del $NS_B 2>/dev/null || true
  case $OUT in "$W"/*) ;; *) rm -rf "$W" ;; esac
}
trap cleanup EXIT
mkdir -p "$W/src" "$W/exp"
python3 - "$W/src" "$SHAPE" <<'PY'
import os, sys
root, shape = sys.argv[1], sys.argv[2]
def put(p, n):
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        while n > 0:
            k = min(n, 1 << 20); f.write(os.urandom(k)); n -= k
if shape == "large":
    put(f"{root}/large/big", 1 << 30)
else:
    for i in range(20000):
        put(f"{root}/small/d{i // 1000:03}/f{i:05}", 4096)
PY
"$FERRY" certs init "$W/ca" >/dev/null 2>&1
for n in 127.0.0.1 10.203.0.1 client; do "$FERRY" certs issue "$W/ca" $n >/dev/null 2>&1; done
netns_link "$LINK" $NS_A $NS_B 10.203.0 vp
$IN_A perf record -q -e cpu-clock -g -o "$OUT/rx.data" -- "$FERRY" serve --listen $ADDR:17950 \
  --export data="$W/exp" --tls-dir "$W/ca/$ADDR" --state-dir "$W/serve-state" 2>"$W/serve.log" &
SPID=$!; sleep 1
t0=$(date +%s.%N)
$IN_B perf record -q -e cpu-clock -g -o "$OUT/tx.data" -- "$FERRY" copy -q --streams "$STREAMS" \
  "$W/src/$SHAPE" "ferry://$ADDR:17950/data/" --tls-dir "$W/ca/client" --state-dir "$W/state" \
  --fresh >/dev/null
t1=$(date +%s.%N)
sleep 0.3; kill -INT "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=
echo "net-profile: $LINK $SHAPE --streams $STREAMS: $(echo "$t1 - $t0" | bc) s  load $(cut -d' ' -f1 /proc/loadavg)"
for side in rx tx; do
  echo "--- $side (perf report --no-children --sort dso,sym, top $TOP) ---"
  perf report -i "$OUT/$side.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null \
    | grep -v "^#" | grep -v "^$" | head -n "$TOP" || true
done
