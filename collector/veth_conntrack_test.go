package collector

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	sourcens "github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/test/testenv"
	"github.com/netinspect/netinspect/test/topology"
)

// redirectPod turns the topology pod at path into a service-mesh pod: a
// REDIRECT rule in its own namespace sends its outgoing TCP to port 80 to a
// local "sidecar" listener on 15001, which holds every connection, and
// conns connections are opened through it. The pod's conntrack table then
// holds one entry per connection.
func redirectPod(t *testing.T, tp *topology.Topology, pod string, conns int) {
	t.Helper()
	p := tp.Pod(pod)
	if _, err := tp.RunIn(p, "ip link set lo up && nft 'add table ip mesh' && "+
		"nft 'add chain ip mesh out { type nat hook output priority -100 ; }' && "+
		"nft 'add rule ip mesh out tcp dport 80 redirect to :15001'"); err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var l net.Listener
	if err := sourcens.Do(p.Path, func() error {
		var err error
		if l, err = net.Listen("tcp", "127.0.0.1:15001"); err != nil {
			return err
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				held = append(held, c)
			}
		}()
		for range conns {
			// Any address on port 80: the rule redirects it to the sidecar.
			c, err := net.DialTimeout("tcp", "203.0.113.80:80", 5*time.Second)
			if err != nil {
				return err
			}
			held = append(held, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Close()
		for _, c := range held {
			c.Close()
		}
	})
}

// conntrackC runs `conntrack -C` in the pod namespace at path.
func conntrackC(t *testing.T, tp *topology.Topology, pod string) float64 {
	t.Helper()
	out, err := tp.RunIn(tp.Pod(pod), "conntrack -C")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		t.Fatalf("conntrack -C: %q", out)
	}
	return n
}

// TestPodConntrackMatchesConntrackC: a pod namespace with a REDIRECT rule
// and real connections reports its own table's entries, as `conntrack -C`
// in that namespace counts them, and the limit; pods whose namespace
// tracks nothing have no series.
func TestPodConntrackMatchesConntrackC(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "conntrack")
	testenv.RequireCommand(t, "nft")
	e := newVethEnv(t, newIndexPods())
	const conns = 25
	redirectPod(t, e.topo, topology.PodPTP, conns)
	// Other pods send traffic, but nothing in their namespaces tracks it.
	e.topo.SendUDP(e.topo.Pod(topology.PodBridgeA), netip.MustParseAddr("10.244.0.3"), 9, 5)
	c := e.collector(t, zap.NewNop(), DefaultVethConfig())

	var got map[string]float64
	var want float64
	// conntrack -C before and after the scrape agree: the same instant.
	for range 20 {
		before := conntrackC(t, e.topo, topology.PodPTP)
		got = gather(t, c)
		if want = conntrackC(t, e.topo, topology.PodPTP); before == want {
			break
		}
	}
	// Each connection is one entry: the client's redirected one (the
	// sidecar's accepted end is the same flow's reply direction).
	if want != conns {
		t.Fatalf("conntrack -C in the pod: %v, want %d", want, conns)
	}
	lim := ctMax(t)
	compareSeries(t, got, map[string]float64{
		fmt.Sprintf(`netinspect_pod_conntrack_entries{namespace=%q,pod=%q}`, testNamespace, topology.PodPTP):       want,
		fmt.Sprintf(`netinspect_pod_conntrack_entries_limit{namespace=%q,pod=%q}`, testNamespace, topology.PodPTP): lim,
	}, "netinspect_pod_conntrack_")
}

// ctMax is the node's nf_conntrack_max, the limit of every namespace.
func ctMax(t *testing.T) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestPodConntrackKeepsAnIdleMeshPodAndSkipsAVanishedNamespace: once a
// pod's table has held entries, its series stays at 0 when idle; a
// namespace that is gone when its table is read costs only its own series
// and a debug log.
func TestPodConntrackKeepsAnIdleMeshPodAndSkipsAVanishedNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "conntrack")
	testenv.RequireCommand(t, "nft")
	e := newVethEnv(t, newIndexPods())
	redirectPod(t, e.topo, topology.PodPTP, 3)
	redirectPod(t, e.topo, topology.PodDual, 2)
	core, logs := observer.New(zapcore.DebugLevel)
	c := e.collector(t, zap.New(core), DefaultVethConfig())
	key := func(pod string) string {
		return fmt.Sprintf(`netinspect_pod_conntrack_entries{namespace=%q,pod=%q}`, testNamespace, pod)
	}
	got := gather(t, c)
	if got[key(topology.PodPTP)] != 3 || got[key(topology.PodDual)] != 2 {
		t.Fatalf("pod tables %v and %v, want 3 and 2", got[key(topology.PodPTP)], got[key(topology.PodDual)])
	}
	if _, err := e.topo.RunIn(e.topo.Pod(topology.PodDual), "conntrack -F"); err != nil {
		t.Fatal(err)
	}
	if v, ok := gather(t, c)[key(topology.PodDual)]; !ok || v != 0 {
		t.Errorf("idle mesh pod: %s = %v (present %v), want 0", key(topology.PodDual), v, ok)
	}

	// The namespace of the ptp pod goes between the mapping and the read.
	r, err := c.Result(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ifaces := r.Interfaces
	for i := range ifaces {
		if ifaces[i].Pod.Name == topology.PodPTP {
			ifaces[i].NetNS += "-gone"
		}
	}
	c.mu.Lock()
	pcs := c.podConntrack(context.Background(), ifaces)
	c.mu.Unlock()
	if len(pcs) != 1 || pcs[0].Pod.Name != topology.PodDual {
		t.Errorf("pod tables with one namespace gone: %+v, want the dual pod's only", pcs)
	}
	if logs.FilterMessageSnippet("conntrack table not read").Len() == 0 {
		t.Error("no debug log for the vanished namespace")
	}
}
