package links

import (
	"testing"

	"github.com/vishvananda/netlink"
)

// TestHostVeths checks which links are pod ends: veths whose peer is in
// another namespace.
func TestHostVeths(t *testing.T) {
	veth := func(name string, index, parent, nsid int) netlink.Link {
		a := netlink.NewLinkAttrs()
		a.Name, a.Index, a.ParentIndex, a.NetNsID = name, index, parent, nsid
		return &netlink.Veth{LinkAttrs: a}
	}
	bridge := netlink.NewLinkAttrs()
	bridge.Name, bridge.Index = "cni0", 2
	links := []netlink.Link{
		veth("cali1", 7, 2, 0),
		&netlink.Bridge{LinkAttrs: bridge},
		veth("cilium_host", 4, 5, -1), // peer in the same namespace
		veth("veth2", 5, 3, 1),
	}
	got := HostVeths(links)
	if len(got) != 2 || got[0].Name != "veth2" || got[1].Name != "cali1" {
		t.Fatalf("hostVeths = %+v, want veth2 then cali1", got)
	}
}
