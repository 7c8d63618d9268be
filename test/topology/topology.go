// Package topology builds, with the real kernel, the network layouts that
// container network plugins leave on a Kubernetes node, for the veth
// collector's integration tests and benchmarks.
//
// A network namespace plays the node. Pods are network namespaces joined to
// it by veth pairs, either through the bridge cni0 (flannel, the bridge
// plugin) or point-to-point with a /32 (and /128) host route through the host
// end (Calico, kindnet, Cilium). Pod namespaces are bind-mounted under a
// directory the test passes to the collector as --path.netns, as CNI runtimes
// do under /run/netns; a pod can instead be held only by a process (found
// through procfs). Everything is removed when the test ends, pass or fail.
//
//	topo := topology.New(t)
//	a := topo.AddPod(topology.PodSpec{Name: "a", Interfaces: []topology.IfaceSpec{
//		{Name: "eth0", Attach: topology.Bridge, Addrs: []string{"10.244.0.2/24"}}}})
package topology

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// Addresses of the node side.
const (
	// BridgeName is the bridge of bridge-attached pods.
	BridgeName = "cni0"
	// BridgeIPv4 and BridgeIPv6 are the bridge's addresses, the gateway of
	// bridge-attached pods (10.244.0.0/24, fd00:10:244::/64).
	BridgeIPv4 = "10.244.0.1/24"
	BridgeIPv6 = "fd00:10:244::1/64"
	// NodeIP is the node's own address (on the node namespace's loopback);
	// hostNetwork pods have it.
	NodeIP = "192.168.77.10"
	// PTPHostMAC is the MAC address of every point-to-point host end, as
	// Calico sets it, so pods can use a static gateway neighbour.
	PTPHostMAC = "ee:ee:ee:ee:ee:ee"
	// PTPGatewayIPv4 and PTPGatewayIPv6 are the link-local gateways of
	// point-to-point pods.
	PTPGatewayIPv4 = "169.254.1.1"
	PTPGatewayIPv6 = "fe80::1"
)

// Attach says how a pod interface is joined to the node.
type Attach int

const (
	// Bridge: the host end is a port of cni0; the pod's gateway is the
	// bridge address.
	Bridge Attach = iota
	// PTP: the host end stands alone with a host route per pod address.
	PTP
)

// IfaceSpec describes one pod interface.
type IfaceSpec struct {
	// Name inside the pod (eth0, net1).
	Name   string
	Attach Attach
	// Addrs are the pod-side addresses in CIDR form (10.244.0.2/24 on a
	// bridge, 10.244.1.5/32 and fd00:10:245::5/128 point-to-point).
	Addrs []string
	// DefaultRoute makes this interface the pod's default route.
	DefaultRoute bool
}

// PodSpec describes one pod network namespace.
type PodSpec struct {
	// Name is unique in the topology; it names the bind mount.
	Name       string
	Interfaces []IfaceSpec
	// ProcOnly holds the namespace by a process instead of a bind mount, so
	// only procfs finds it.
	ProcOnly bool
}

// Iface is a pod interface as built.
type Iface struct {
	Name, HostName string
	Attach         Attach
	Addrs          []netip.Prefix
}

// Pod is a pod network namespace as built.
type Pod struct {
	Name string
	// Path opens the namespace: the bind mount, or /proc/<pid>/ns/net.
	Path       string
	PID        int // holder process of a ProcOnly pod
	Interfaces []Iface

	proc *exec.Cmd
}

// IPs are the pod's addresses over all interfaces, in order.
func (p *Pod) IPs() []netip.Addr {
	var out []netip.Addr
	for _, i := range p.Interfaces {
		for _, a := range i.Addrs {
			out = append(out, a.Addr())
		}
	}
	return out
}

// Topology is a node namespace with its pods.
type Topology struct {
	t testing.TB
	// Node is the namespace that plays the node.
	Node *netns.NS
	// NetNSDir holds the pods' bind mounts; pass it as --path.netns.
	NetNSDir string

	mu   sync.Mutex
	pods map[string]*Pod
}

// New creates the node namespace with the bridge cni0 (dual-stack),
// forwarding on, and NodeIP on loopback.
func New(t testing.TB) *Topology {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "unshare")
	testenv.RequireCommand(t, "nsenter")
	testenv.RequireCommand(t, "bash")
	dir, err := os.MkdirTemp("", "ni-topo-netns-")
	if err != nil {
		t.Fatalf("netns dir: %v", err)
	}
	tp := &Topology{t: t, Node: netns.New(t, "node"), NetNSDir: dir, pods: map[string]*Pod{}}
	// Registered after netns.New, so it runs before the node is removed.
	t.Cleanup(tp.cleanup)
	tp.sh(
		"echo 1 > /proc/sys/net/ipv4/ip_forward",
		"echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
		"echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad",
		"echo 0 > /proc/sys/net/ipv6/conf/default/router_solicitations",
		"ip addr add "+NodeIP+"/32 dev lo",
		"ip link add "+BridgeName+" type bridge",
		"ip addr add "+BridgeIPv4+" dev "+BridgeName,
		"ip addr add "+BridgeIPv6+" dev "+BridgeName+" nodad",
		"ip link set "+BridgeName+" up",
	)
	return tp
}

// HostName is the host end's name for a pod interface: "veth" or (for
// point-to-point, like Calico) "cali" and 8 hex digits of a hash.
func HostName(pod, iface string, a Attach) string {
	sum := sha256.Sum256([]byte(pod + "/" + iface))
	prefix := "veth"
	if a == PTP {
		prefix = "cali"
	}
	return prefix + hex.EncodeToString(sum[:4])
}

// AddPod creates a pod namespace, its interfaces, addresses and routes, and
// the host ends with their bridge ports or host routes.
func (tp *Topology) AddPod(spec PodSpec) *Pod {
	tp.t.Helper()
	p, err := tp.addPod(spec)
	if err != nil {
		tp.t.Fatalf("add pod %s: %v", spec.Name, err)
	}
	return p
}

func (tp *Topology) addPod(spec PodSpec) (*Pod, error) {
	tp.mu.Lock()
	if _, dup := tp.pods[spec.Name]; dup {
		tp.mu.Unlock()
		return nil, fmt.Errorf("pod %s exists", spec.Name)
	}
	p := &Pod{Name: spec.Name}
	tp.pods[spec.Name] = p // reserved; cleanup removes whatever was built
	tp.mu.Unlock()

	if spec.ProcOnly {
		if err := tp.startHolder(p); err != nil {
			return nil, err
		}
	} else {
		path := filepath.Join(tp.NetNSDir, spec.Name)
		if err := os.WriteFile(path, nil, 0o444); err != nil {
			return nil, err
		}
		p.Path = path
		if out, err := exec.Command("unshare", "--net="+path, "true").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("unshare --net=%s: %w: %s", path, err, out)
		}
	}

	podCmds := []string{
		"echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad",
		"echo 0 > /proc/sys/net/ipv6/conf/default/router_solicitations",
		"ip link set lo up",
	}
	var nodeCmds []string
	for _, is := range spec.Interfaces {
		ifc := Iface{Name: is.Name, Attach: is.Attach, HostName: HostName(spec.Name, is.Name, is.Attach)}
		for _, a := range is.Addrs {
			pfx, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, fmt.Errorf("address %q: %w", a, err)
			}
			ifc.Addrs = append(ifc.Addrs, pfx)
		}
		p.Interfaces = append(p.Interfaces, ifc)
		nodeCmds = append(nodeCmds, fmt.Sprintf("ip link add %s type veth peer name %s netns %s", ifc.HostName, ifc.Name, p.Path))
		switch is.Attach {
		case Bridge:
			nodeCmds = append(nodeCmds, fmt.Sprintf("ip link set %s master %s up", ifc.HostName, BridgeName))
		case PTP:
			nodeCmds = append(nodeCmds, fmt.Sprintf("ip link set %s address %s up", ifc.HostName, PTPHostMAC))
			for _, a := range ifc.Addrs {
				nodeCmds = append(nodeCmds, fmt.Sprintf("ip route add %s dev %s scope link", netip.PrefixFrom(a.Addr(), a.Addr().BitLen()), ifc.HostName))
			}
		}
		for _, a := range ifc.Addrs {
			extra := ""
			if a.Addr().Is6() {
				extra = " nodad"
			}
			podCmds = append(podCmds, fmt.Sprintf("ip addr add %s dev %s%s", a, ifc.Name, extra))
		}
		podCmds = append(podCmds, "ip link set "+ifc.Name+" up")
		if is.Attach == PTP {
			podCmds = append(podCmds,
				fmt.Sprintf("ip neigh add %s lladdr %s dev %s nud permanent", PTPGatewayIPv4, PTPHostMAC, ifc.Name),
				fmt.Sprintf("ip -6 neigh add %s lladdr %s dev %s nud permanent", PTPGatewayIPv6, PTPHostMAC, ifc.Name),
				fmt.Sprintf("ip route add %s dev %s scope link", PTPGatewayIPv4, ifc.Name))
		}
		if is.DefaultRoute {
			gw4, gw6 := strings.TrimSuffix(BridgeIPv4, "/24"), strings.TrimSuffix(BridgeIPv6, "/64")
			if is.Attach == PTP {
				gw4, gw6 = PTPGatewayIPv4, PTPGatewayIPv6
			}
			for _, a := range ifc.Addrs {
				if a.Addr().Is4() {
					podCmds = append(podCmds, fmt.Sprintf("ip route add default via %s dev %s", gw4, ifc.Name))
				} else {
					podCmds = append(podCmds, fmt.Sprintf("ip -6 route add default via %s dev %s", gw6, ifc.Name))
				}
			}
		}
	}
	// The pod's default sysctls must be set before its interfaces exist.
	if err := tp.runSh(nsenterArgs(p.Path), podCmds[:2]...); err != nil {
		return nil, err
	}
	if err := tp.runSh([]string{"ip", "netns", "exec", tp.Node.Name}, nodeCmds...); err != nil {
		return nil, err
	}
	if err := tp.runSh(nsenterArgs(p.Path), podCmds[2:]...); err != nil {
		return nil, err
	}
	return p, nil
}

func nsenterArgs(path string) []string { return []string{"nsenter", "--net=" + path} }

// startHolder starts a process in a new network namespace that holds it
// for a ProcOnly pod, and waits until the process is in it.
func (tp *Topology) startHolder(p *Pod) error {
	self, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		return err
	}
	cmd := exec.Command("unshare", "--net", "--", "sleep", "3600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start holder: %w", err)
	}
	p.proc, p.PID = cmd, cmd.Process.Pid
	p.Path = fmt.Sprintf("/proc/%d/ns/net", p.PID)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		// unshare execs sleep in place, so the pid stays; once it has
		// unshared, its namespace differs from ours.
		if st, err := os.Stat(p.Path); err == nil && !os.SameFile(st, self) {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("holder %d did not enter a new network namespace", p.PID)
}

// DeletePod removes a pod: its host ends first (so they are gone when this
// returns; a namespace's own removal is asynchronous), then its namespace.
func (tp *Topology) DeletePod(name string) {
	tp.t.Helper()
	if err := tp.deletePod(name); err != nil {
		tp.t.Fatalf("delete pod %s: %v", name, err)
	}
}

func (tp *Topology) deletePod(name string) error {
	tp.mu.Lock()
	p := tp.pods[name]
	delete(tp.pods, name)
	tp.mu.Unlock()
	if p == nil {
		return nil
	}
	var cmds []string
	for _, i := range p.Interfaces {
		cmds = append(cmds, "ip link del "+i.HostName+" 2>/dev/null || true")
	}
	err := tp.runSh([]string{"ip", "netns", "exec", tp.Node.Name}, cmds...)
	if p.proc != nil {
		_ = p.proc.Process.Kill()
		_ = p.proc.Wait()
	} else if p.Path != "" {
		if uerr := unix.Unmount(p.Path, unix.MNT_DETACH); uerr != nil && err == nil && !os.IsNotExist(uerr) && uerr != unix.EINVAL {
			err = fmt.Errorf("unmount %s: %w", p.Path, uerr)
		}
		if rerr := os.Remove(p.Path); rerr != nil && err == nil && !os.IsNotExist(rerr) {
			err = rerr
		}
	}
	return err
}

// Pod returns a pod by name, or nil.
func (tp *Topology) Pod(name string) *Pod {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.pods[name]
}

// Pods returns the pods' names.
func (tp *Topology) Pods() []string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	out := make([]string, 0, len(tp.pods))
	for n := range tp.pods {
		out = append(out, n)
	}
	return out
}

// RunIn runs a shell script inside the pod's namespace and returns its
// output.
func (tp *Topology) RunIn(p *Pod, script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+p.Path, "bash", "-c", script).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in pod %s: %s: %w: %s", p.Name, script, err, out)
	}
	return string(out), nil
}

// SendUDP sends n one-byte UDP datagrams from the pod to addr:port with
// bash's /dev/udp (no receiver is needed: each answers with an ICMP port
// unreachable, so traffic flows both ways).
func (tp *Topology) SendUDP(p *Pod, addr netip.Addr, port, n int) {
	tp.t.Helper()
	script := fmt.Sprintf("for i in $(seq %d); do printf x > /dev/udp/%s/%d || true; done", n, addr, port)
	if _, err := tp.RunIn(p, script); err != nil {
		tp.t.Fatal(err)
	}
}

// runSh runs the commands, joined by " && ", with sh inside the namespace
// that prefix enters, in one process.
func (tp *Topology) runSh(prefix []string, cmds ...string) error {
	if len(cmds) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := append(append([]string(nil), prefix...), "sh", "-ec", strings.Join(cmds, "\n"))
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out.String())
	}
	return nil
}

// sh runs commands in the node namespace and fails the test on error.
func (tp *Topology) sh(cmds ...string) {
	tp.t.Helper()
	if err := tp.runSh([]string{"ip", "netns", "exec", tp.Node.Name}, cmds...); err != nil {
		tp.t.Fatal(err)
	}
}

func (tp *Topology) cleanup() {
	for _, name := range tp.Pods() {
		if err := tp.deletePod(name); err != nil {
			tp.t.Errorf("cleanup: %v", err)
		}
	}
	if err := os.RemoveAll(tp.NetNSDir); err != nil {
		tp.t.Errorf("cleanup: %v", err)
	}
}

// AddPods adds pods with a few workers in parallel, for large layouts.
func (tp *Topology) AddPods(specs []PodSpec) {
	tp.t.Helper()
	const workers = 4
	work := make(chan PodSpec)
	errs := make(chan error, len(specs))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				if _, err := tp.addPod(s); err != nil {
					errs <- fmt.Errorf("add pod %s: %w", s.Name, err)
				}
			}
		}()
	}
	for _, s := range specs {
		work <- s
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		tp.t.Fatal(err)
	}
}
