package collector

import (
	"slices"
	"sort"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netinspect/netinspect/kube"
)

// Identity labels: a series about a pod or a service port carries them
// first, added here as kube-state-metrics adds namespace and pod to every
// pod series, never written out per collector. Their values come from the
// kube index and are empty when the object is unknown.
var (
	// podIdentity labels a pod's series.
	podIdentity = []string{"namespace", "pod"}
	// serviceIdentity labels a Service's series.
	serviceIdentity = []string{"namespace", "service"}
	// servicePortIdentity labels a Service port's series; port is the
	// port's name, or its number when the port is unnamed, on every family
	// that has it (IPVS, whose port is the virtual server's, is the one
	// exception: its service port is port_name).
	servicePortIdentity = []string{"namespace", "service", "port"}
)

// identityDesc is the desc of a family whose series carry the identity
// labels, then extra.
func identityDesc(subsystem, name, help string, identity []string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystem, name), help,
		append(slices.Clone(identity), extra...), nil)
}

// podValues are the label values of a series of podIdentity.
func podValues(p kube.PodRef, extra ...string) []string {
	return append([]string{p.Namespace, p.Name}, extra...)
}

// serviceValues are the label values of a series of serviceIdentity.
func serviceValues(namespace, service string, extra ...string) []string {
	return append([]string{namespace, service}, extra...)
}

// servicePortValues are the label values of a series of
// servicePortIdentity.
func servicePortValues(p kube.ServicePortRef, extra ...string) []string {
	return append([]string{p.Namespace, p.Service, p.Port}, extra...)
}

// protocolNames are the lower-case names of IP protocol numbers, as the
// protocol label spells them; a protocol without a name is its number.
var protocolNames = func() (names [256]string) {
	for i := range names {
		names[i] = strconv.Itoa(i)
	}
	for num, name := range map[int]string{1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6", 132: "sctp", 136: "udplite"} {
		names[num] = name
	}
	return names
}()

// ServicePortCount is a count about one Service port, such as the endpoints
// kube-proxy programmed for it.
type ServicePortCount struct {
	kube.ServicePortRef
	N int
}

// servicePortCounts adds up counts per Service port as the rule collectors
// find them, naming an unnamed port by its number: from the rules when they
// have it, else from the index (a Service with an unnamed port has only
// that one); "" when neither knows it.
type servicePortCounts struct {
	index   *kube.Index
	unnamed map[[2]string]string // (namespace, service) -> port number, built on first need
	counts  map[kube.ServicePortRef]int
}

func newServicePortCounts(index *kube.Index) *servicePortCounts {
	return &servicePortCounts{index: index, counts: map[kube.ServicePortRef]int{}}
}

// ref is the Service port of namespace/service whose port name is port
// ("" when unnamed) and, when known from the rules, whose number is number.
func (s *servicePortCounts) ref(namespace, service, port string, number int) kube.ServicePortRef {
	if port == "" {
		if number > 0 {
			port = strconv.Itoa(number)
		} else {
			if s.unnamed == nil {
				s.unnamed = unnamedIndexPorts(s.index)
			}
			port = s.unnamed[[2]string{namespace, service}]
		}
	}
	return kube.ServicePortRef{Namespace: namespace, Service: service, Port: port}
}

// add adds n to the count of ref.
func (s *servicePortCounts) add(ref kube.ServicePortRef, n int) { s.counts[ref] += n }

// present makes ref counted, with 0 unless something was added to it.
func (s *servicePortCounts) present(ref kube.ServicePortRef) {
	if _, ok := s.counts[ref]; !ok {
		s.counts[ref] = 0
	}
}

// sorted returns the counts by namespace, service and port.
func (s *servicePortCounts) sorted() []ServicePortCount {
	out := make([]ServicePortCount, 0, len(s.counts))
	for ref, n := range s.counts {
		out = append(out, ServicePortCount{ServicePortRef: ref, N: n})
	}
	sortServicePortCounts(out)
	return out
}

// sortServicePortCounts sorts counts by namespace, service and port.
func sortServicePortCounts(out []ServicePortCount) {
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		return a.Port < b.Port
	})
}

// unnamedIndexPorts maps each Service of the index to the number of its
// unnamed port.
func unnamedIndexPorts(ix *kube.Index) map[[2]string]string {
	out := map[[2]string]string{}
	for _, s := range ix.Services() {
		for _, p := range s.Ports {
			if p.Name == "" {
				out[[2]string{s.Namespace, s.Name}] = strconv.Itoa(int(p.Port))
			}
		}
	}
	return out
}
