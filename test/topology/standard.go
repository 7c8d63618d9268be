package topology

// Names of the pods of the standard layout.
const (
	PodBridgeA = "bridge-a" // cni0, 10.244.0.2
	PodBridgeB = "bridge-b" // cni0, 10.244.0.3
	PodPTP     = "ptp"      // point-to-point, 10.244.1.5/32 (kindnet, Calico)
	PodDual    = "dual"     // point-to-point, dual-stack 10.244.1.6 and fd00:10:245::6
	PodMultus  = "multus"   // eth0 on cni0 10.244.0.5, net1 point-to-point 10.244.2.5
	PodOrphan  = "orphan"   // cni0, 10.244.0.9; stands for a sandbox with no Pod object
	PodProc    = "proc"     // point-to-point 10.244.1.7, held only by a process (procfs)
)

// StandardSpecs is the layout covering the common CNI plugins: two pods on
// the bridge, a point-to-point pod, a dual-stack pod, a pod with two
// interfaces (Multus), a namespace without a Pod object and a namespace that
// only procfs finds.
func StandardSpecs() []PodSpec {
	br := func(addr string) []IfaceSpec {
		return []IfaceSpec{{Name: "eth0", Attach: Bridge, Addrs: []string{addr}, DefaultRoute: true}}
	}
	ptp := func(addrs ...string) []IfaceSpec {
		return []IfaceSpec{{Name: "eth0", Attach: PTP, Addrs: addrs, DefaultRoute: true}}
	}
	return []PodSpec{
		{Name: PodBridgeA, Interfaces: br("10.244.0.2/24")},
		{Name: PodBridgeB, Interfaces: br("10.244.0.3/24")},
		{Name: PodPTP, Interfaces: ptp("10.244.1.5/32")},
		{Name: PodDual, Interfaces: ptp("10.244.1.6/32", "fd00:10:245::6/128")},
		{Name: PodMultus, Interfaces: []IfaceSpec{
			{Name: "eth0", Attach: Bridge, Addrs: []string{"10.244.0.5/24"}, DefaultRoute: true},
			{Name: "net1", Attach: PTP, Addrs: []string{"10.244.2.5/32"}},
		}},
		{Name: PodOrphan, Interfaces: br("10.244.0.9/24")},
		{Name: PodProc, ProcOnly: true, Interfaces: ptp("10.244.1.7/32")},
	}
}

// AddStandard adds the standard layout's pods.
func (tp *Topology) AddStandard() {
	tp.t.Helper()
	for _, s := range StandardSpecs() {
		tp.AddPod(s)
	}
}
