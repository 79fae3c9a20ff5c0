# Sourced by net-bench.sh and net-profile.sh: the link a network benchmark runs over.
#
#   netns_link LINK NS_A NS_B NET TAG
#     LINK  lo, veth1g or veth10g
#     NS_A, NS_B  the receiving and sending namespaces (made again; removed by the caller)
#     NET   the /24 of the veth pair without its last byte (A is NET.1, B is NET.2)
#     TAG   two letters naming the veth ends (TAGa$$, TAGb$$)
# Sets IN_A / IN_B (how a command runs on the receiving / sending side) and ADDR (A's address).
# Needs root, ip and tc for the veth links.
netns_link() {
  local link=$1 na=$2 nb=$3 net=$4 tag=$5 rate bits x
  ip netns del "$na" 2>/dev/null || true; ip netns del "$nb" 2>/dev/null || true
  if [ "$link" = lo ]; then IN_A=""; IN_B=""; ADDR=127.0.0.1; return; fi
  rate=${link#veth}
  case $rate in 1g) bits=1000000000 ;; 10g) bits=10000000000 ;; *) echo "$0: link $link?" >&2; exit 2 ;; esac
  ip netns add "$na"; ip netns add "$nb"
  ip link add "${tag}a$$" netns "$na" type veth peer name "${tag}b$$" netns "$nb"
  ip -n "$na" addr add "$net.1/24" dev "${tag}a$$"; ip -n "$nb" addr add "$net.2/24" dev "${tag}b$$"
  for x in "$na ${tag}a$$" "$nb ${tag}b$$"; do
    set -- $x
    ip -n "$1" link set "$2" up; ip -n "$1" link set lo up
    # A bucket of at least one 100 Hz tick's worth of bytes.
    ip netns exec "$1" tc qdisc replace dev "$2" root tbf rate "${rate}bit" \
      burst $((bits / 8 / 100)) latency 50ms
  done
  IN_A="ip netns exec $na"; IN_B="ip netns exec $nb"; ADDR=$net.1
}
