package collector

import (
	"net/netip"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/conntrack"
)

// passLookup is the index as one full pass reads it: the pods of this
// node by address and the services by frontend, copied once at the start
// of the pass (a few hundred pod addresses; the cluster's service
// frontends, tens of thousands at most), so that the entries of the dump,
// hundreds of thousands, are counted without taking the index's lock or
// hashing names. Pods and services are numbered; the counters are keyed
// by number and protocol and turned into attrKeys once, at the end.
type passLookup struct {
	pods    map[[16]byte]int32
	podKeys []attrKey // proto 0
	fronts  map[frontKey]int32
	svcKeys []attrKey // proto 0
}

// Addresses are keyed as 16 bytes (IPv4 mapped): a netip.Addr carries a
// zone pointer, which makes hashing it cost several times more, for every
// address of every entry of the pass.
type frontKey struct {
	addr  [16]byte
	port  uint16
	proto uint8
}

// protoNumbers are the IP protocol numbers of the index's protocol names.
var protoNumbers = map[string]uint8{"tcp": 6, "udp": 17, "sctp": 132}

// newPassLookup copies what count needs of ix (nil: nothing).
func newPassLookup(ix *kube.Index) *passLookup {
	l := &passLookup{pods: map[[16]byte]int32{}, fronts: map[frontKey]int32{}}
	podSlot := map[kube.PodRef]int32{}
	ix.EachPodIP(func(ip netip.Addr, p kube.PodRef) {
		n, ok := podSlot[p]
		if !ok {
			n = int32(len(l.podKeys))
			podSlot[p] = n
			l.podKeys = append(l.podKeys, attrKey{namespace: p.Namespace, name: p.Name})
		}
		l.pods[ip.As16()] = n
	})
	svcSlot := map[attrKey]int32{}
	ix.EachServiceAddrPort(func(protocol string, ap netip.AddrPort, ref kube.ServicePortRef) {
		proto, ok := protoNumbers[protocol]
		if !ok {
			return
		}
		k := attrKey{namespace: ref.Namespace, name: ref.Service}
		n, ok := svcSlot[k]
		if !ok {
			n = int32(len(l.svcKeys))
			svcSlot[k] = n
			l.svcKeys = append(l.svcKeys, k)
		}
		l.fronts[frontKey{ap.Addr().As16(), ap.Port(), proto}] = n
	})
	return l
}

// slotKey packs a pod or service number and a protocol.
func slotKey(slot int32, proto uint8) uint64 { return uint64(slot)<<8 | uint64(proto) }

// fastCounts are one dump's pod and service counts by slotKey.
type fastCounts struct {
	pods, services map[uint64]int64
}

// count is Attribution.count (see CONTRACT.md for what counts toward whom)
// against the pass's copy of the index.
func (f *fastCounts) count(l *passLookup, e *conntrack.Entry) {
	proto := e.Orig.Proto
	client, clientOK := l.pods[e.Orig.Src.As16()]
	if clientOK {
		f.pods[slotKey(client, proto)]++
	}
	// Reply.Src is the backend after DNAT, or Orig.Dst without NAT; a pod
	// talking to itself counts once.
	if server, ok := l.pods[e.Reply.Src.As16()]; ok && (!clientOK || server != client) {
		f.pods[slotKey(server, proto)]++
	}
	if proto == 6 || proto == 17 || proto == 132 {
		if s, ok := l.fronts[frontKey{e.Orig.Dst.As16(), e.Orig.DstPort, proto}]; ok {
			f.services[slotKey(s, proto)]++
		}
	}
}

// attrCounts turns counts by slotKey into counts by attrKey.
func attrCounts(m map[uint64]int64, keys []attrKey) map[attrKey]int64 {
	out := make(map[attrKey]int64, len(m))
	for k, n := range m {
		a := keys[k>>8]
		a.proto = uint8(k)
		out[a] += n
	}
	return out
}
