package node

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cniBinDir is where Debian's containernetworking-plugins installs the
// plugins.
const cniBinDir = "/usr/lib/cni"

// Network is a CNI network configuration for the node's pods.
type Network struct {
	// Name is the network's name (and host-local's directory under
	// /var/lib/cni/networks).
	Name string
	// Plugin is the main plugin: "bridge" or "ptp".
	Plugin string
	// Subnet is the pods' range, inside ClusterCIDR.
	Subnet netip.Prefix
}

var (
	// Bridge attaches pods to the Linux bridge cni0 (its address, the pods'
	// gateway, is the range's first), as flannel and kubenet do.
	Bridge = Network{Name: "bridge-pods", Plugin: "bridge", Subnet: netip.MustParsePrefix("10.244.1.0/24")}
	// PTP gives each pod a veth routed by a /32 on the node, as Calico and
	// Cilium's routing modes do.
	PTP = Network{Name: "ptp-pods", Plugin: "ptp", Subnet: netip.MustParsePrefix("10.244.2.0/24")}
)

// conflist renders the network as a CNI configuration list.
func (nw Network) conflist() string {
	ipam := fmt.Sprintf(`{"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}`, nw.Subnet)
	var plugin string
	switch nw.Plugin {
	case "bridge":
		plugin = fmt.Sprintf(`{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true, "ipam": %s}`, ipam)
	case "ptp":
		plugin = fmt.Sprintf(`{"type": "ptp", "ipMasq": false, "mtu": 1500, "ipam": %s}`, ipam)
	default:
		panic("node: unknown CNI plugin " + nw.Plugin)
	}
	return fmt.Sprintf(`{"cniVersion": "0.4.0", "name": %q, "plugins": [%s]}`+"\n", nw.Name, plugin)
}

// Network is the CNI network pods created now get.
func (n *Node) Network() Network { return n.network }

// UseNetwork makes nw the network of the pods created from now on (pods
// already running keep theirs), as changing a node's CNI configuration
// does, and waits until containerd has loaded it.
//
// containerd (1.6) reloads its CNI configuration on a write, remove or
// rename in the directory, but ignores file creation: the new file is
// written, then the old one removed, and the reload that follows the
// removal (its debug log line) is the one that sees only the new file.
func (n *Node) UseNetwork(t testing.TB, nw Network) {
	t.Helper()
	old := n.network
	if old == nw {
		return
	}
	// Only log lines written after the change count.
	var from int64
	if st, err := os.Stat(n.containerd.log); err == nil {
		from = st.Size()
	}
	path := filepath.Join(n.cniConfDir(), "10-"+nw.Name+".conflist")
	if err := os.WriteFile(path, []byte(nw.conflist()), 0o644); err != nil {
		t.Fatal(err)
	}
	want, op := path, "WRITE"
	if old != (Network{}) {
		oldPath := filepath.Join(n.cniConfDir(), "10-"+old.Name+".conflist")
		if err := os.Remove(oldPath); err != nil {
			t.Fatal(err)
		}
		want, op = oldPath, "REMOVE"
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(n.containerd.log)
		if int64(len(b)) < from {
			from = 0
		}
		for _, l := range strings.Split(string(b[from:]), "\n") {
			if strings.Contains(l, "receiving change event from cni conf dir") && strings.Contains(l, want) && strings.Contains(l, op) {
				n.network = nw
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not reload its CNI configuration (%s of %s) within 30 s:\n%s", op, want, n.containerd.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
