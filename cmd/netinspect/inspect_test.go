package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/topology"
)

var update = flag.Bool("update", false, "rewrite the golden files of the inspect test")

// volatile masks what changes from run to run or machine to machine: the
// table's total and limit (loopback connections of the test itself are
// tracked too), the kernel's statistics, the host's hash size and the
// global neighbour tables.
var volatile = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\d+ of \d+ entries \([\d.]+%\)`), "N of LIMIT entries (P%)"},
	{regexp.MustCompile(`\b(chaintoolong|clash_resolve|drop|early_drop|error|found|insert|insert_failed|invalid|search_restart) \d+`), "$1 N"},
	{regexp.MustCompile(`conntrack limit \d+, \d+ hash buckets \(limit/4 = \d+\)`), "conntrack limit LIMIT, N hash buckets (limit/4 = N)"},
	{regexp.MustCompile(`(neighbour ipv[46]): \d+ entries, gc_thresh1/2/3 \d+/\d+/\d+, table_fulls \d+`), "$1: N entries, gc_thresh1/2/3 N/N/N, table_fulls N"},
}

func mask(s string) string {
	for _, v := range volatile {
		s = v.re.ReplaceAllString(s, v.with)
	}
	return s
}

// TestInspectReportsTheTestNode runs `netinspect inspect` in a namespace that
// plays a node: pods on a bridge and point-to-point, Pod, Service and
// EndpointSlice objects in a real kube-apiserver, the real kube-proxy in
// iptables mode, and conntrack entries from the pods. The table is compared
// with a golden file (volatile figures masked) and the JSON with its schema.
func TestInspectReportsTheTestNode(t *testing.T) {
	tp := topology.New(t)
	var specs []topology.PodSpec
	for _, s := range topology.StandardSpecs() {
		switch s.Name {
		case topology.PodBridgeA, topology.PodPTP, topology.PodOrphan:
			specs = append(specs, s)
		}
	}
	tp.AddPods(specs)
	cart, web := tp.Pod(topology.PodBridgeA), tp.Pod(topology.PodPTP)

	cp := controlplane.Start(t)
	cp.CreateNode(t, "node-a", topology.NodeIP)
	cartPod := cp.CreatePod(t, controlplane.PodSpec{Namespace: "shop", Name: "cart-0", Node: "node-a", IPs: addrs(cart.IPs())})
	cp.CreatePod(t, controlplane.PodSpec{Namespace: "shop", Name: "web-0", Node: "node-a", IPs: addrs(web.IPs())})
	cp.CreatePod(t, controlplane.PodSpec{Namespace: "shop", Name: "host-agent", Node: "node-a", HostNetwork: true})
	ports := []controlplane.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}
	cp.CreateService(t, controlplane.ServiceSpec{Namespace: "shop", Name: "cart", ClusterIPs: []string{"10.96.0.20"}, Ports: ports})
	cp.CreateEndpointSlice(t, "shop", "cart-1", "cart", discoveryv1.AddressTypeIPv4, ports, []controlplane.Endpoint{
		{IP: cart.IPs()[0].String(), Node: "node-a", Pod: "cart-0", PodUID: cartPod.UID},
	})
	// kube-proxy's start makes the API server reachable in the node
	// namespace at the address of the admin kubeconfig (KubeconfigIn).
	kp := cp.StartKubeProxy(t, tp.Node, controlplane.KubeProxyOptions{NodeName: "node-a", Mode: "iptables"})
	kubeconfig := cp.AdminKubeconfig
	controlplane.Eventually(t, 90*time.Second, func() error {
		out, _ := tp.Node.Run("iptables-save", "-t", "nat")
		if !strings.Contains(out, `"shop/cart:http cluster IP"`) {
			return fmt.Errorf("kube-proxy has not programmed shop/cart yet\n%s", kp.Tail())
		}
		return nil
	})

	// Clients: 30 flows from cart-0 to the service, 12 from web-0 to cart-0.
	for _, f := range []ctfill.Spec{
		{Count: 30, Src: cart.IPs()[0], Dst: netip.MustParseAddr("10.96.0.20"), DstPort: 80, Proto: 6},
		{Count: 12, Src: web.IPs()[0], Dst: cart.IPs()[0], DstPort: 8080, Proto: 6},
	} {
		if n, err := ctfill.Create(tp.Node.FD(), f); err != nil || n != f.Count {
			t.Fatalf("created %d of %d flows: %v", n, f.Count, err)
		}
	}

	run := func(args ...string) string {
		t.Helper()
		argv := append([]string{binary(t), "inspect", "--log.level=error", "--timeout=60s",
			"--kubeconfig=" + kubeconfig, "--node-name=node-a", "--path.netns=" + tp.NetNSDir}, args...)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var stdout, stderr bytes.Buffer
		cmd := tp.Node.Command(ctx, argv...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("netinspect inspect %v: %v\n%s", args, err, stderr.String())
		}
		return stdout.String()
	}

	table := run()
	for i, line := range strings.Split(table, "\n") {
		if len(line) > 80 {
			t.Errorf("line %d is %d columns wide: %q", i+1, len(line), line)
		}
	}
	// Each pod's network namespace is the one the topology bound it to.
	for _, p := range []*topology.Pod{cart, web} {
		if !strings.Contains(table, "netns "+p.Path+"\n") {
			t.Errorf("inspect does not show %s's network namespace %s", p.Name, p.Path)
		}
	}

	// The chains it names are the ones the real kube-proxy wrote.
	nat := tp.Node.MustRun("iptables-save", "-t", "nat")
	chains := regexp.MustCompile(`iptables chain (KUBE-SVC-\w+)`).FindAllStringSubmatch(table, -1)
	if len(chains) != 2 {
		t.Errorf("inspect names %d iptables chains, want one per service port (2)", len(chains))
	}
	for _, m := range chains {
		if !strings.Contains(nat, ":"+m[1]+" ") {
			t.Errorf("inspect names chain %s, which kube-proxy did not create", m[1])
		}
	}

	golden := "testdata/inspect.golden"
	got := mask(strings.ReplaceAll(table, tp.NetNSDir, "NETNSDIR"))
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("inspect output differs from %s (masked):\n--- got\n%s\n--- want\n%s", golden, got, want)
	}

	js := run("--output=json")
	sch, err := jsonschema.NewCompiler().Compile("../../inspect/report.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(strings.NewReader(js))
	if err != nil {
		t.Fatalf("inspect JSON: %v\n%s", err, js)
	}
	if err := sch.Validate(inst); err != nil {
		t.Errorf("inspect JSON does not match its schema: %v\n%s", err, js)
	}

	filtered := run("--pod=web-0")
	if !strings.Contains(filtered, "shop/web-0") || strings.Contains(filtered, "shop/cart-0") {
		t.Errorf("--pod=web-0 shows other pods:\n%s", filtered)
	}
}

func addrs(ips []netip.Addr) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}
