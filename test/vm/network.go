package vm

import (
	"fmt"
	"os"
	"path/filepath"
)

// Network gives the guest one network interface on qemu's user-mode network
// (slirp): the guest is GuestIP/24 with a default route through GatewayIP,
// configured by /init before the tests run. A connection the guest opens to
// any other address is made by qemu as an ordinary socket of its own, in
// the network namespace NetNS; so with NetNS the control plane's namespace
// (test/controlplane), the guest reaches the API server at
// controlplane.AdvertiseAddress, the address its certificate names. Nothing
// reaches the guest unasked (no port forwards), and no interface, route or
// rule is added on the host.
type Network struct {
	// NetNS is the name of the network namespace (under /run/netns, as
	// test/netns names them) qemu runs in. It is required, so a guest never
	// reaches the host's own network by accident.
	NetNS string
}

// Addresses of the guest's side of Config.Network (qemu's defaults).
const (
	// GuestIP is the guest's address on its interface, with prefix
	// GuestPrefixLen.
	GuestIP        = "10.0.2.15"
	GuestPrefixLen = 24
	// GatewayIP is qemu's side, the guest's default gateway. Connections to
	// it go to qemu's loopback (127.0.0.1 in NetNS).
	GatewayIP = "10.0.2.2"
)

// networkModules drive the virtio NIC; their dependencies (virtio,
// virtio_ring, net_failover, failover) come from modules.dep.
var networkModules = []string{"virtio_pci", "virtio_net"}

// check reports a missing or bad NetNS.
func (n *Network) check() error {
	if n.NetNS == "" {
		return fmt.Errorf("vm.Network.NetNS is empty: name the network namespace qemu runs in")
	}
	p := filepath.Join("/run/netns", n.NetNS)
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("network namespace for the guest's network: %w", err)
	}
	return nil
}

// withNetworkModules returns mods plus the NIC's modules when cfg has a
// network, without changing the caller's slice.
func withNetworkModules(cfg Config, mods []string) []string {
	if cfg.Network == nil {
		return mods
	}
	return append(append([]string(nil), mods...), networkModules...)
}

// networkInit is the part of /init that configures the guest's interface:
// the first one backed by a device (dummy0, which the dummy module makes,
// has none). A failure is printed and the tests still run, so they report
// what they could not reach.
func networkInit(cfg Config) string {
	if cfg.Network == nil {
		return ""
	}
	return fmt.Sprintf(`nic=
for d in /sys/class/net/*; do
	[ -e "$d/device" ] && nic=${d##*/} && break
done
if [ -n "$nic" ]; then
	ip addr add %s/%d dev "$nic" && ip link set "$nic" up && ip route add default via %s dev "$nic" ||
		echo "netinspect-vm: configuring $nic failed"
	echo "netinspect-vm: $nic is %s/%d, gateway %s"
else
	echo "netinspect-vm: no network interface found (is virtio_net loaded?)"
fi
`, GuestIP, GuestPrefixLen, GatewayIP, GuestIP, GuestPrefixLen, GatewayIP)
}

// qemuCommand returns the program and arguments that start qemu: in
// Network.NetNS when there is a network (ip netns exec execs qemu in place,
// so the process is qemu's), with the NIC's arguments in place of "-nic
// none".
func qemuCommand(cfg Config, qemu string, args []string) (string, []string) {
	if cfg.Network == nil {
		return qemu, append(args, "-nic", "none")
	}
	args = append(args,
		"-netdev", fmt.Sprintf("user,id=n0,net=10.0.2.0/24,host=%s,ipv6=off", GatewayIP),
		"-device", "virtio-net-pci,netdev=n0",
	)
	return "ip", append([]string{"netns", "exec", cfg.Network.NetNS, qemu}, args...)
}
