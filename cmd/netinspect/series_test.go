package main

import (
	"bufio"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/kpfixture"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// seriesCaps is what the default output's series count may grow by with
// the number of Services while every node is in sync: nothing. It may
// differ by the documented caps at most: kube_proxy_drift_service_port_seconds
// (--kube-proxy.drift.max-series, 50) and, in IPVS mode, the series of 50
// virtual servers without a usable backend (--collector.ipvs.max-no-backend-series);
// docs/metrics.md, "Series per node".
const seriesCaps = 50

// seriesCount is one scrape's series (samples) per metric family.
type seriesCount map[string]int

func (c seriesCount) total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// countSeries counts the samples of an exposition per family name
// (histogram _bucket, _sum and _count count toward their family).
func countSeries(body string) seriesCount {
	out := seriesCount{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && strings.Contains(body, "# TYPE "+base+" histogram") {
				name = base
			}
		}
		out[name]++
	}
	return out
}

// sampleValue returns the value of the sample line starting with prefix
// (its name and labels), and whether there is one.
func sampleValue(body, prefix string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, prefix+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			return v, err == nil
		}
	}
	return 0, false
}

// TestBinarySeriesDoNotGrowWithServices: the real kube-proxy programs 100
// Services x 3 endpoints, then 10,000 (created through client-go), then
// also one Service of 10,000 endpoints; the exporter runs with its default
// flags on that node. Each time it reports every service port in sync, and
// its series count stays the same (within the documented caps): with the
// default output a node's series depend on its own pods, its own
// mismatches and fixed caps, never on the cluster's Services.
func TestBinarySeriesDoNotGrowWithServices(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "nsenter")
	cp := controlplane.Start(t)
	const ns = "scale"
	cp.EnsureNamespace(t, ns)
	cp.EnsureNamespace(t, kpfixture.Namespace)
	cp.CreateNode(t, kpfixture.Node, kpfixture.NodeIPv4)
	node := netns.New(t, "series")
	node.MustRun("ip", "addr", "add", kpfixture.NodeIPv4+"/32", "dev", "lo")
	kp := cp.StartKubeProxy(t, node, controlplane.KubeProxyOptions{NodeName: kpfixture.Node, Mode: "iptables"})
	// Default flags but a shorter refresh interval (5 s, so a grace of
	// 10 s), which changes when series appear, not which.
	const refresh = 5 * time.Second
	e := startExporter(t, node, nil, "--kubeconfig="+cp.KubeconfigIn(t, node), "--node-name="+kpfixture.Node,
		"--collector.iptables.refresh-interval="+refresh.String())

	// inSync waits until the exporter reports want IPv4 service ports in
	// sync and none drifting, still so after the grace and another listing
	// (a mismatch within its grace counts as in sync), and returns that
	// scrape's series.
	inSync := func(want int, within time.Duration) seriesCount {
		t.Helper()
		var body string
		start := time.Now()
		check := func() error {
			_, body = e.get(t, node, "/metrics")
			got, _ := sampleValue(body, `netinspect_kube_proxy_service_ports{family="ipv4",state="in_sync"}`)
			var drifting float64
			for _, s := range []string{"missing", "stale", "endpoints"} {
				v, _ := sampleValue(body, `netinspect_kube_proxy_service_ports{family="ipv4",state="`+s+`"}`)
				drifting += v
			}
			if int(got) != want || drifting != 0 {
				return fmt.Errorf("%v service ports in sync, %v drifting; want %d in sync\nkube-proxy:\n%s", got, drifting, want, kp.Tail())
			}
			return nil
		}
		controlplane.Eventually(t, within, func() error {
			if err := check(); err != nil {
				return err
			}
			time.Sleep(3 * refresh) // the grace (2 refreshes) and one more listing
			if err := check(); err != nil {
				return fmt.Errorf("a grace later: %w", err)
			}
			return nil
		})
		t.Logf("%d service ports in sync after %v", want, time.Since(start).Round(time.Second))
		return countSeries(body)
	}

	cp.CreateServices(t, ns, 0, 100, 3)
	small := inSync(101, 3*time.Minute) // and default/kubernetes
	// kube-proxy would resync after every few of the 9,900 objects,
	// rewriting a growing ruleset: it waits, stopped, until all are in.
	kp.Pause(t)
	cp.CreateServices(t, ns, 100, 10000, 3)
	kp.Resume(t)
	large := inSync(10001, 10*time.Minute)

	// A Service of 10,000 endpoints, in ten slices of 1,000 (the API's
	// limit per slice).
	big := kpfixture.Service{Name: "big", Spec: corev1.ServiceSpec{Ports: kpfixture.Ports("http")}}
	for s := range 10 {
		sl := kpfixture.Slice{Family: discoveryv1.AddressTypeIPv4}
		for i := range 1000 {
			k := s*1000 + i
			sl.Endpoints = append(sl.Endpoints, kpfixture.Ready(fmt.Sprintf("10.250.%d.%d", k/250, k%250+1), "node-2"))
		}
		big.Slices = append(big.Slices, sl)
	}
	kp.Pause(t)
	kpfixture.Create(t, cp.Client, big)
	kp.Resume(t)
	withBig := inSync(10002, 5*time.Minute)

	for _, tc := range []struct {
		name string
		c    seriesCount
	}{{"10,000 Services", large}, {"and one of 10,000 endpoints", withBig}} {
		var diffs []string
		for name := range mergeKeys(small, tc.c) {
			if small[name] != tc.c[name] {
				diffs = append(diffs, fmt.Sprintf("%s %d -> %d", name, small[name], tc.c[name]))
			}
		}
		sort.Strings(diffs)
		d := tc.c.total() - small.total()
		t.Logf("series with 100 Services: %d; %s: %d (%+d) %v", small.total(), tc.name, tc.c.total(), d, diffs)
		if d > seriesCaps || d < -seriesCaps {
			t.Errorf("%s: the series count changed by %d, more than the documented caps (%d): %v", tc.name, d, seriesCaps, diffs)
		}
	}
	// The breakdown the docs' table is built from.
	var names []string
	for n := range small {
		names = append(names, n)
	}
	sort.Strings(names)
	var lines []string
	for _, n := range names {
		lines = append(lines, fmt.Sprintf("%s %d", n, small[n]))
	}
	t.Logf("series per family (100 Services, no pods):\n%s", strings.Join(lines, "\n"))
}

func mergeKeys(a, b seriesCount) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}
