package inspect

import (
	"cmp"
	"slices"
	"strconv"

	"github.com/netinspect/netinspect/collector"
	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source/conntrack"
)

// statNames are the conntrack statistics' names as the report prints them.
var statNames = func() (names [conntrack.NumStats]string) {
	for s := range conntrack.NumStats {
		names[s] = s.String()
	}
	return names
}()

// Filter narrows the pods and services of a report. Empty fields match all.
type Filter struct {
	Namespace, Pod, Service string
}

func (f Filter) pod(namespace, name string) bool {
	return (f.Namespace == "" || f.Namespace == namespace) && (f.Pod == "" || f.Pod == name)
}

func (f Filter) service(namespace, name string) bool {
	return (f.Namespace == "" || f.Namespace == namespace) && (f.Service == "" || f.Service == name) && f.Pod == ""
}

// Report is everything `netinspect inspect` prints. Its JSON form is
// described by inspect/report.schema.json.
type Report struct {
	Node          string `json:"node"`
	Kubernetes    string `json:"kubernetes"`
	KubeProxyMode string `json:"kube_proxy_mode"`
	// KubeProxyDrift is null when drift was not judged (no Kubernetes,
	// the index not synced, or the collector of kube-proxy's mode off).
	KubeProxyDrift *DriftSummary   `json:"kube_proxy_drift"`
	Conntrack      *ConntrackUsage `json:"conntrack"`
	Pods           []Pod           `json:"pods"`
	Services       []Service       `json:"services"`
	DNS            []DNSProbe      `json:"dns"`
	Tables         *Tables         `json:"tables"`
	Problems       []Problem       `json:"problems"`
}

// DriftSummary is what kube-proxy programmed on this node against what the
// API says it should have, per family.
type DriftSummary struct {
	// Mode is the kube-proxy mode whose rules were judged.
	Mode     string        `json:"mode"`
	Families []FamilyDrift `json:"families"`
	// Pending counts the mismatches still within their grace (counted as
	// in sync).
	Pending int `json:"pending"`
}

// FamilyDrift counts one family's service ports by state.
type FamilyDrift struct {
	Family        string  `json:"family"`
	InSync        int     `json:"in_sync"`
	Missing       int     `json:"missing"`
	Stale         int     `json:"stale"`
	Endpoints     int     `json:"endpoints"`
	OldestSeconds float64 `json:"oldest_seconds"`
}

// PortDrift is a service port's drift state in one family.
type PortDrift struct {
	Family string `json:"family"`
	// State is in_sync, missing, stale or endpoints; Seconds how long a
	// mismatch has lasted (0 in sync).
	State   string  `json:"state"`
	Seconds float64 `json:"seconds"`
}

// ConntrackUsage is the table's fill against its limit and who fills it.
type ConntrackUsage struct {
	Entries     float64            `json:"entries"`
	Limit       float64            `json:"limit"`
	UsageRatio  float64            `json:"usage_ratio"`
	Source      string             `json:"source"`
	Stats       map[string]float64 `json:"stats"`
	TopPods     []Entries          `json:"top_pods"`
	TopServices []Entries          `json:"top_services"`
}

// Entries is a pod's or service's share of the conntrack table.
type Entries struct {
	Namespace string  `json:"namespace"`
	Name      string  `json:"name"`
	Entries   float64 `json:"entries"`
}

// Pod is a pod of this node with its network plumbing.
type Pod struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	HostNetwork bool     `json:"host_network"`
	IPs         []string `json:"ips"`
	// Netns is the path of the pod's network namespace when the veth
	// collector entered it (empty otherwise).
	Netns      string      `json:"netns"`
	Interfaces []Interface `json:"interfaces"`
	// ConntrackEntries is null when attribution did not run.
	ConntrackEntries *float64 `json:"conntrack_entries"`
}

// Interface is one pod interface and its host veth.
type Interface struct {
	Interface     string `json:"interface"`
	HostInterface string `json:"host_interface"`
	Method        string `json:"method"`
}

// Service is a Service with what the kernel has programmed for it.
type Service struct {
	Namespace  string        `json:"namespace"`
	Name       string        `json:"name"`
	Type       string        `json:"type"`
	ClusterIPs []string      `json:"cluster_ips"`
	Ports      []ServicePort `json:"ports"`
	// ReadyEndpoints is what the API says; null without Kubernetes.
	ReadyEndpoints *int `json:"ready_endpoints"`
	// IPVS is what IPVS has for the service's virtual servers; null when
	// IPVS has none (or is not in use).
	IPVS *IPVSState `json:"ipvs"`
	// ConntrackEntries is null when attribution did not run.
	ConntrackEntries *float64 `json:"conntrack_entries"`
}

// IPVSState sums the backends of a service's IPVS virtual servers.
type IPVSState struct {
	Backends            int     `json:"backends"`
	ActiveConnections   float64 `json:"active_connections"`
	InactiveConnections float64 `json:"inactive_connections"`
}

// ServicePort is one port of a service and its endpoints in each of
// kube-proxy's backends (null where that backend has nothing for it).
type ServicePort struct {
	Port string `json:"port"`
	// IPTablesChain is kube-proxy's KUBE-SVC chain of the port in iptables
	// mode (computed as kube-proxy names it); empty in other modes.
	IPTablesChain     string   `json:"iptables_chain"`
	IPTablesEndpoints *float64 `json:"iptables_endpoints"`
	NFTablesEndpoints *float64 `json:"nftables_endpoints"`
	// Drift is the port's kube-proxy drift state per family judged; null
	// when drift was not judged.
	Drift []PortDrift `json:"drift"`
}

// DNSProbe is the last result of one DNS probe.
type DNSProbe struct {
	Server  string `json:"server"`
	Name    string `json:"name"`
	Success bool   `json:"success"`
}

// Build assembles the report from the collectors' results, the index (nil
// when Kubernetes enrichment is off) and the problems Gather found.
func Build(node, kubeState string, index *kube.Index, res Results, problems []Problem, f Filter) Report {
	r := Report{
		Node:       node,
		Kubernetes: kubeState,
		Pods:       []Pod{},
		Services:   []Service{},
		DNS:        []DNSProbe{},
		Problems:   problems,
	}
	if r.Problems == nil {
		r.Problems = []Problem{}
	}
	switch {
	case res.IPTables != nil && res.IPTables.Mode != "":
		r.KubeProxyMode = res.IPTables.Mode
	case res.NFTables != nil:
		r.KubeProxyMode = res.NFTables.Mode
	}
	drift := driftOf(res)
	r.KubeProxyDrift = driftSummary(drift)
	r.Conntrack = conntrackUsage(res, f)
	r.Pods = pods(index, res, f)
	r.Services = services(index, res, f, r.KubeProxyMode, drift)
	r.Tables = tables(res, f)
	if res.DNS != nil {
		for _, p := range res.DNS.Probes {
			r.DNS = append(r.DNS, DNSProbe{Server: p.Server, Name: p.Name, Success: p.OK})
		}
	}
	slices.SortFunc(r.DNS, func(a, b DNSProbe) int { return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Server, b.Server)) })
	return r
}

// topN is how many pods and services the conntrack section lists.
const topN = 5

func conntrackUsage(res Results, f Filter) *ConntrackUsage {
	ct := res.Conntrack
	if ct == nil {
		return nil
	}
	c := &ConntrackUsage{Entries: float64(ct.Entries), Limit: float64(ct.Limit), Source: ct.Source,
		Stats: map[string]float64{}, TopPods: []Entries{}, TopServices: []Entries{}}
	if c.Limit > 0 {
		c.UsageRatio = c.Entries / c.Limit
	}
	for _, cpu := range ct.CPUs {
		for s, v := range cpu.Counters {
			if cpu.Present[s] {
				c.Stats[statNames[s]] += float64(v)
			}
		}
	}
	if a := res.Attribution; a != nil {
		c.TopPods = top(sumBy(a.Pods, f.pod), topN)
		c.TopServices = top(sumBy(a.Services, f.service), topN)
	}
	return c
}

// sumBy sums counts over their protocols, keyed by namespace and name,
// keeping those keep accepts.
func sumBy(counts []collector.AttributedCount, keep func(namespace, name string) bool) []Entries {
	sums := map[[2]string]float64{}
	for _, c := range counts {
		k := [2]string{c.Namespace, c.Name}
		if keep(k[0], k[1]) {
			sums[k] += float64(c.Entries)
		}
	}
	out := make([]Entries, 0, len(sums))
	for k, v := range sums {
		out = append(out, Entries{Namespace: k[0], Name: k[1], Entries: v})
	}
	return out
}

func top(es []Entries, n int) []Entries {
	slices.SortFunc(es, func(a, b Entries) int {
		return cmp.Or(cmp.Compare(b.Entries, a.Entries), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return es[:min(n, len(es))]
}

func pods(index *kube.Index, res Results, f Filter) []Pod {
	type key struct{ ns, name string }
	byKey := map[key]*Pod{}
	var order []key
	add := func(ns, name string) *Pod {
		k := key{ns, name}
		if p, ok := byKey[k]; ok {
			return p
		}
		p := &Pod{Namespace: ns, Name: name, IPs: []string{}, Interfaces: []Interface{}}
		byKey[k] = p
		order = append(order, k)
		return p
	}
	for _, p := range index.Pods() {
		if !f.pod(p.Namespace, p.Name) {
			continue
		}
		rp := add(p.Namespace, p.Name)
		rp.HostNetwork = p.HostNetwork
		for _, ip := range p.IPs {
			rp.IPs = append(rp.IPs, ip.String())
		}
	}
	if v := res.Veth; v != nil {
		for _, i := range v.Interfaces {
			if !f.pod(i.Pod.Namespace, i.Pod.Name) {
				continue
			}
			rp := add(i.Pod.Namespace, i.Pod.Name)
			rp.Interfaces = append(rp.Interfaces, Interface{Interface: i.Interface, HostInterface: i.HostInterface, Method: i.Method})
			if i.NetNS != "" {
				rp.Netns = i.NetNS
			}
		}
	}
	if a := res.Attribution; a != nil {
		for _, e := range sumBy(a.Pods, f.pod) {
			v := e.Entries
			add(e.Namespace, e.Name).ConntrackEntries = &v
		}
		for _, p := range byKey {
			if p.ConntrackEntries == nil {
				zero := 0.0
				p.ConntrackEntries = &zero
			}
		}
	}
	out := make([]Pod, 0, len(order))
	for _, k := range order {
		p := byKey[k]
		slices.SortFunc(p.Interfaces, func(a, b Interface) int {
			return cmp.Or(cmp.Compare(a.Interface, b.Interface), cmp.Compare(a.HostInterface, b.HostInterface))
		})
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b Pod) int { return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name)) })
	return out
}

// driftOf is the drift judgment of the collector of kube-proxy's mode (at
// most one judges), or nil.
func driftOf(res Results) *collector.DriftResult {
	switch {
	case res.IPTables != nil && res.IPTables.Drift != nil:
		return res.IPTables.Drift
	case res.NFTables != nil && res.NFTables.Drift != nil:
		return res.NFTables.Drift
	case res.IPVS != nil:
		return res.IPVS.Drift
	}
	return nil
}

func driftSummary(d *collector.DriftResult) *DriftSummary {
	if d == nil {
		return nil
	}
	s := &DriftSummary{Mode: d.Mode, Families: []FamilyDrift{}, Pending: d.Pending}
	for _, fd := range d.Families {
		s.Families = append(s.Families, FamilyDrift{Family: fd.Family.String(),
			InSync: fd.ServicePorts[kubeproxy.InSync], Missing: fd.ServicePorts[kubeproxy.Missing],
			Stale: fd.ServicePorts[kubeproxy.Stale], Endpoints: fd.ServicePorts[kubeproxy.EndpointsDiffer],
			OldestSeconds: fd.Oldest.Seconds()})
	}
	return s
}

// addDrift sets the drift state of the ports of the services in the index,
// in each family they have and drift was judged in, and adds the stale
// ones, which only the rules still name.
func addDrift(index *kube.Index, d *collector.DriftResult, f Filter, add func(ns, name string) *Service, port func(*Service, string) *ServicePort) {
	if d == nil {
		return
	}
	judged := map[kubeproxy.IPFamily]bool{}
	for _, fd := range d.Families {
		judged[fd.Family] = true
	}
	counted := make(map[kubeproxy.DriftKey]kubeproxy.DriftSeries, len(d.Counted))
	for _, m := range d.Counted {
		counted[m.Key] = m
	}
	for _, si := range index.Services() {
		if !f.service(si.Namespace, si.Name) || len(si.ClusterIPs) == 0 {
			continue
		}
		s := add(si.Namespace, si.Name)
		for _, p := range si.Ports {
			name := p.Name
			if name == "" {
				name = strconv.Itoa(int(p.Port))
			}
			sp := port(s, name)
			if sp.Drift == nil {
				sp.Drift = []PortDrift{}
			}
			for _, ip := range si.ClusterIPs {
				fam := kubeproxy.IPv4
				if ip.Is6() {
					fam = kubeproxy.IPv6
				}
				if !judged[fam] {
					continue
				}
				m := counted[kubeproxy.DriftKey{Family: fam, Namespace: si.Namespace, Service: si.Name, Port: name}]
				sp.Drift = append(sp.Drift, PortDrift{Family: fam.String(), State: m.State.String(), Seconds: m.Age.Seconds()})
			}
		}
	}
	for _, m := range d.Counted {
		if m.State != kubeproxy.Stale || m.Key.Service == "" || !f.service(m.Key.Namespace, m.Key.Service) {
			continue
		}
		sp := port(add(m.Key.Namespace, m.Key.Service), m.Key.Port)
		if sp.Drift == nil {
			sp.Drift = []PortDrift{}
		}
		if !slices.ContainsFunc(sp.Drift, func(p PortDrift) bool { return p.Family == m.Key.Family.String() }) {
			sp.Drift = append(sp.Drift, PortDrift{Family: m.Key.Family.String(), State: m.State.String(), Seconds: m.Age.Seconds()})
		}
	}
}

func services(index *kube.Index, res Results, f Filter, mode string, drift *collector.DriftResult) []Service {
	type key struct{ ns, name string }
	byKey := map[key]*Service{}
	add := func(ns, name string) *Service {
		k := key{ns, name}
		if s, ok := byKey[k]; ok {
			return s
		}
		s := &Service{Namespace: ns, Name: name, ClusterIPs: []string{}, Ports: []ServicePort{}}
		byKey[k] = s
		return s
	}
	port := func(s *Service, name string) *ServicePort {
		for i := range s.Ports {
			if s.Ports[i].Port == name {
				return &s.Ports[i]
			}
		}
		s.Ports = append(s.Ports, ServicePort{Port: name})
		return &s.Ports[len(s.Ports)-1]
	}
	for _, si := range index.Services() {
		if !f.service(si.Namespace, si.Name) {
			continue
		}
		s := add(si.Namespace, si.Name)
		s.Type = si.Type
		for _, ip := range si.ClusterIPs {
			s.ClusterIPs = append(s.ClusterIPs, ip.String())
		}
		ready := si.ReadyEndpoints
		s.ReadyEndpoints = &ready
		for _, p := range si.Ports {
			name := p.Name
			if name == "" {
				name = strconv.Itoa(int(p.Port))
			}
			sp := port(s, name)
			if mode == kubeproxy.ModeIPTables {
				sp.IPTablesChain = kubeproxy.PrefixSVC + kubeproxy.PortProtoHash(kubeproxy.ServicePortName(si.Namespace, si.Name, p.Name), p.Protocol)
			}
		}
	}
	addKernelState(res, f, add, port)
	addDrift(index, drift, f, add, port)
	out := make([]Service, 0, len(byKey))
	for _, s := range byKey {
		slices.SortFunc(s.Ports, func(a, b ServicePort) int { return cmp.Compare(a.Port, b.Port) })
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// addKernelState adds to the services what kube-proxy programmed for them
// (iptables and nftables endpoints, IPVS backends) and their conntrack
// entries, through add and port (which find or add a service and a port).
func addKernelState(res Results, f Filter, add func(ns, name string) *Service, port func(*Service, string) *ServicePort) {
	addCount := func(counts []collector.ServicePortCount, field func(*ServicePort) **float64) {
		for _, c := range counts {
			if c.Service == "" || !f.service(c.Namespace, c.Service) {
				continue
			}
			ptr := field(port(add(c.Namespace, c.Service), c.Port))
			if *ptr == nil {
				*ptr = new(float64)
			}
			**ptr += float64(c.N)
		}
	}
	if t := res.IPTables; t != nil {
		for _, fam := range t.Families {
			addCount(fam.Endpoints, func(p *ServicePort) **float64 { return &p.IPTablesEndpoints })
		}
	}
	if t := res.NFTables; t != nil {
		for _, fam := range t.Families {
			addCount(fam.Endpoints, func(p *ServicePort) **float64 { return &p.NFTablesEndpoints })
		}
	}
	if v := res.IPVS; v != nil {
		for _, vs := range v.VirtualServers {
			ns, name := vs.Service.Namespace, vs.Service.Service
			if name == "" || !f.service(ns, name) {
				continue
			}
			for _, b := range vs.Backends {
				s := add(ns, name)
				if s.IPVS == nil {
					s.IPVS = &IPVSState{}
				}
				s.IPVS.Backends++
				s.IPVS.ActiveConnections += float64(b.Kernel.Active)
				s.IPVS.InactiveConnections += float64(b.Kernel.Inactive)
			}
		}
	}
	if a := res.Attribution; a != nil {
		for _, e := range sumBy(a.Services, f.service) {
			if e.Name == "" {
				continue // the sum of services beyond the top-K
			}
			v := e.Entries
			add(e.Namespace, e.Name).ConntrackEntries = &v
		}
	}
}
