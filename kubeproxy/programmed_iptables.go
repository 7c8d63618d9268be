package kubeproxy

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
	"strconv"
	"strings"
)

// IPTablesListing is what one family's iptables-save listing shows of
// kube-proxy's per-service rules. The rule parser (source/iptables) fills
// its maps directly: Services from the nat table, Rejected from the filter
// table.
type IPTablesListing struct {
	// Services maps the 16-character hash shared by a service port's
	// KUBE-SVC-, KUBE-SVL-, KUBE-EXT- and KUBE-FW- chains (nat table) to
	// what the listing shows of them.
	Services map[string]*IPTablesServicePort
	// Rejected maps the service port names ("namespace/name[:port]") that a
	// filter-table rule rejects as having no endpoints to the port of that
	// rule (0 when unknown).
	Rejected map[string]int
}

// IPTablesServicePort is one service port's chains in a listing.
type IPTablesServicePort struct {
	// PortName is "namespace/name[:port]" from a rule comment ("" when
	// none was seen).
	PortName string
	// Protocol (lower case) and Port are those of the KUBE-SERVICES rule
	// that sends the ClusterIP to the port's chain ("... cluster IP"); ""
	// and 0 when there is no such rule.
	Protocol string
	Port     int
	// HasSVC and HasSVL say whether the KUBE-SVC- and KUBE-SVL- chains
	// exist.
	HasSVC, HasSVL bool
	// Endpoints are the distinct KUBE-SEP- chains the KUBE-SVC- and
	// KUBE-SVL- chains jump to.
	Endpoints map[string]struct{}
}

// largeClusterEndpoints is iptables/proxier.go's
// largeClusterEndpointsThreshold: above it kube-proxy drops the comments of
// endpoint rules and deletes chains it no longer uses only once per
// --iptables-sync-period, so an unused KUBE-SVC-/KUBE-SVL- chain (not
// jumped to any more, harmless) can outlive its service port's change by up
// to two sync periods.
const largeClusterEndpoints = 1000

// CompareIPTables compares one family's iptables listing with what the
// expectation says kube-proxy programs (iptables mode), service port by
// service port.
//
// What the listing shows, and so what is judged: whether the ClusterIP rule
// in KUBE-SERVICES exists (and its port), whether the Cluster and Local
// policy chains exist, the union of the endpoint chains they jump to
// (named by kube-proxy's hash of service port, protocol and endpoint, so
// equal names are equal endpoints), and the "has no endpoints" REJECT
// rules. Not shown, so not judged: the "has no local endpoints" DROP rules,
// which of the two policy chains an endpoint chain hangs from, the
// KUBE-EXT- chains and the KUBE-NODEPORTS / external IP / load-balancer
// rules. A stale service port is one whose ClusterIP rule or REJECT rule is
// still there while the API no longer has it.
//
// In large-cluster mode (TotalEndpoints above 1000) a policy chain that is
// present but no longer wanted may be one kube-proxy has not deleted yet;
// then only the wanted endpoint chains are required, not the absence of
// others.
func (e *Expectation) CompareIPTables(f IPFamily, l *IPTablesListing) Comparison {
	c := Comparison{Family: f}
	large := e.TotalEndpoints(f) > largeClusterEndpoints
	var h hasher
	ports := e.Family(f)
	// Stale ones are what the listing has beyond the expected ones: count
	// the matches first, build the sets only when something is left over.
	jumpsMatched, rejectsMatched := 0, 0
	for i := range ports {
		p := &ports[i]
		c.ServicePorts++
		got := l.Services[string(h.servicePort(p.ID))]
		if got == nil {
			got = &IPTablesServicePort{}
		}
		if got.Port != 0 {
			jumpsMatched++
		}
		name := h.portName(p.ID)
		_, rejected := l.Rejected[string(name)]
		if rejected {
			rejectsMatched++
		}
		if s := compareIPTablesPort(p, got, rejected, large, &h); s != InSync {
			c.Mismatches = append(c.Mismatches, Mismatch{Key: p.driftKey(), State: s})
		}
	}
	jumps := 0
	for _, s := range l.Services {
		if s.Port != 0 {
			jumps++
		}
	}
	var stale *staleSet
	addStale := func(k DriftKey) {
		if stale == nil {
			stale = newStaleSet(&c, ports)
		}
		stale.add(k)
	}
	if jumps > jumpsMatched {
		expected := make(map[string]struct{}, len(ports))
		for i := range ports {
			expected[string(h.servicePort(ports[i].ID))] = struct{}{}
		}
		for hash, s := range l.Services {
			if _, ok := expected[hash]; ok || s.Port == 0 {
				continue // expected, or not reached from KUBE-SERVICES
			}
			addStale(staleKey(f, s.PortName, s.Port))
		}
	}
	if len(l.Rejected) > rejectsMatched {
		names := make(map[string]struct{}, len(ports))
		for i := range ports {
			names[ports[i].ID.String()] = struct{}{}
		}
		for name, port := range l.Rejected {
			if _, ok := names[name]; ok {
				continue
			}
			addStale(staleKey(f, name, port))
		}
	}
	return c
}

func compareIPTablesPort(p *ExpectedPort, got *IPTablesServicePort, gotReject, large bool, h *hasher) DriftState {
	wantSVC, wantSVL, wantReject := len(p.Cluster) > 0, len(p.Local) > 0, !p.HasEndpoints
	wantJump := p.Internal().Verdict == Forward
	gotJump := got.Port != 0
	switch {
	case (wantSVC || wantSVL || wantReject || wantJump) && !(got.HasSVC || got.HasSVL || gotReject || gotJump):
		return Missing
	case wantReject != gotReject, wantJump != gotJump, gotJump && got.Port != int(p.Port):
		return EndpointsDiffer
	case wantSVC && !got.HasSVC, wantSVL && !got.HasSVL:
		return EndpointsDiffer
	}
	unwanted := (got.HasSVC && !wantSVC) || (got.HasSVL && !wantSVL)
	if unwanted && !large {
		return EndpointsDiffer
	}
	want := p.Reachable()
	if !unwanted && len(got.Endpoints) != len(want) {
		return EndpointsDiffer
	}
	for _, ep := range want {
		if _, ok := got.Endpoints[string(h.endpoint(p.ID, ep))]; !ok {
			return EndpointsDiffer
		}
	}
	return InSync
}

func (p *ExpectedPort) driftKey() DriftKey {
	return DriftKey{Family: p.ID.Family, Namespace: p.ID.Namespace, Service: p.ID.Name, Port: p.PortLabel()}
}

// staleKey labels a service port known only from a rule: its comment's
// "namespace/name[:port]", the port number when unnamed.
func staleKey(f IPFamily, portName string, port int) DriftKey {
	k := DriftKey{Family: f}
	ns, rest, ok := strings.Cut(portName, "/")
	if !ok {
		return k
	}
	k.Namespace = ns
	k.Service, k.Port, _ = strings.Cut(rest, ":")
	if k.Port == "" && port != 0 {
		k.Port = strconv.Itoa(port)
	}
	return k
}

// hasher computes kube-proxy's chain names and hashes
// (iptables/proxier.go portProtoHash, servicePortEndpointChainName: the
// first 16 characters of base32(sha256(...)), and ServicePortName.String)
// into its own buffers: a result is valid until the next call, and map
// lookups with string(result) do not allocate.
type hasher struct {
	buf  []byte
	name [len("KUBE-SEP-") + 16]byte
}

func (h *hasher) sum16(b []byte) {
	sum := sha256.Sum256(b)
	// 10 bytes are exactly 16 base32 characters, the first 16 of the full
	// encoding.
	base32.StdEncoding.Encode(h.name[len("KUBE-SEP-"):], sum[:10])
}

// portName is ServicePortName.String(): "namespace/name[:port]".
func (h *hasher) portName(id ServicePortID) []byte {
	h.buf = append(h.buf[:0], id.Namespace...)
	h.buf = append(h.buf, '/')
	h.buf = append(h.buf, id.Name...)
	if id.Port != "" {
		h.buf = append(h.buf, ':')
		h.buf = append(h.buf, id.Port...)
	}
	return h.buf
}

// servicePort is portProtoHash(servicePortName, protocol), the hash of the
// port's KUBE-SVC-, KUBE-SVL-, KUBE-EXT- and KUBE-FW- chains.
func (h *hasher) servicePort(id ServicePortID) []byte {
	h.portName(id)
	h.buf = append(h.buf, id.Protocol...)
	h.sum16(h.buf)
	return h.name[len("KUBE-SEP-"):]
}

// endpoint is servicePortEndpointChainName(servicePortName, protocol,
// "ip:port"): "KUBE-SEP-" and the hash.
func (h *hasher) endpoint(id ServicePortID, ep netip.AddrPort) []byte {
	h.portName(id)
	h.buf = append(h.buf, id.Protocol...)
	// netip renders "[v6]:port" as net.JoinHostPort does.
	h.buf = ep.AppendTo(h.buf)
	h.sum16(h.buf)
	copy(h.name[:], "KUBE-SEP-")
	return h.name[:]
}
