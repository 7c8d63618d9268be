package collector

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/netinspect/netinspect/source/neighbour"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// ipNtable is what `ip -s ntable show` prints of one family's table (its
// first block; the per-device blocks follow).
type ipNtable map[string]uint64

// ipNtableShow parses `ip -s ntable show` run in ns, by family.
func ipNtableShow(t *testing.T, ns *netns.NS) map[string]ipNtable {
	t.Helper()
	out := ns.MustRun("ip", "-s", "ntable", "show")
	tables := map[string]ipNtable{}
	for _, block := range strings.Split(out, "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		if len(lines) < 2 || strings.HasPrefix(strings.TrimSpace(lines[1]), "dev ") {
			continue
		}
		family := map[string]string{"inet": "ipv4", "inet6": "ipv6"}[strings.Fields(lines[0])[0]]
		if family == "" {
			continue
		}
		kv := ipNtable{}
		for _, line := range lines[1:] {
			f := strings.Fields(line)
			if len(f) > 0 && (f[0] == "config" || f[0] == "stats") {
				f = f[1:]
			}
			for i := 0; i+1 < len(f); i += 2 {
				if v, err := strconv.ParseUint(f[i+1], 10, 64); err == nil {
					kv[f[i]] = v
				}
			}
		}
		tables[family] = kv
	}
	return tables
}

// neighbourReading is a scrape of the collector taken between two
// readings of ip that agree on both tables' entries: all three show the
// same instant.
func neighbourReading(t *testing.T, ns *netns.NS, c *Neighbour) (got map[string]float64, before, after map[string]ipNtable) {
	t.Helper()
	for i := range 20 {
		before = ipNtableShow(t, ns)
		got = gather(t, c)
		after = ipNtableShow(t, ns)
		if before["ipv4"]["entries"] == after["ipv4"]["entries"] && before["ipv6"]["entries"] == after["ipv6"]["entries"] {
			return got, before, after
		}
		time.Sleep(time.Duration(i+1) * 20 * time.Millisecond)
	}
	t.Fatal("the neighbour tables changed during each of 20 readings")
	return nil, nil, nil
}

// TestNeighbourMatchesIPNtableShow adds permanent neighbours in a test
// namespace and checks the collector, asking from that namespace, against
// `ip -s ntable show` there in the same instant: the global entries (which
// grew by exactly the entries added), the thresholds, and the counters.
func TestNeighbourMatchesIPNtableShow(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	ns := netns.New(t, "neigh")
	ns.MustRun("ip", "link", "add", "n0", "type", "veth", "peer", "name", "n1")
	for _, dev := range []string{"n0", "n1"} {
		ns.MustRun("ip", "link", "set", dev, "addrgenmode", "none")
		ns.MustRun("ip", "link", "set", dev, "up")
	}
	c := in(must(NewNeighbour(NeighbourConfig{}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
	const n4, n6 = 41, 19
	var first map[string]float64
	for attempt := 1; ; attempt++ {
		got0, _, ip0 := neighbourReading(t, ns, c)
		var b strings.Builder
		v4, v6 := netip.MustParseAddr("10.210.0.1"), netip.MustParseAddr("fd00:210::1")
		for range n4 {
			fmt.Fprintf(&b, "neigh replace %s lladdr 02:00:00:00:00:01 dev n0 nud permanent\n", v4)
			v4 = v4.Next()
		}
		for range n6 {
			fmt.Fprintf(&b, "neigh replace %s lladdr 02:00:00:00:00:01 dev n0 nud permanent\n", v6)
			v6 = v6.Next()
		}
		ns.MustRun("bash", "-c", "ip -batch - <<'EOF'\n"+b.String()+"EOF")
		got, before, after := neighbourReading(t, ns, c)
		first = got
		if before["ipv4"]["entries"]-ip0["ipv4"]["entries"] != n4 || before["ipv6"]["entries"]-ip0["ipv6"]["entries"] != n6 {
			// Other namespaces' neighbours came or went meanwhile.
			if attempt == 5 {
				t.Fatalf("the host's neighbours changed during each of 5 attempts")
			}
			ns.MustRun("ip", "neigh", "flush", "dev", "n0", "nud", "permanent")
			ns.MustRun("ip", "-6", "neigh", "flush", "dev", "n0", "nud", "permanent")
			continue
		}
		for fam, added := range map[string]float64{"ipv4": n4, "ipv6": n6} {
			k := fmt.Sprintf("netinspect_neighbour_entries{family=%q}", fam)
			if got[k]-got0[k] != added || got[k] != float64(before[fam]["entries"]) {
				t.Errorf("%s = %v (before adding %v), want +%v = ip's %d", k, got[k], got0[k], added, before[fam]["entries"])
			}
			for level, name := range []string{"thresh1", "thresh2", "thresh3"} {
				k := fmt.Sprintf("netinspect_neighbour_gc_threshold{family=%q,level=\"%d\"}", fam, level+1)
				if got[k] != float64(before[fam][name]) {
					t.Errorf("%s = %v, ip says %d", k, got[k], before[fam][name])
				}
			}
			for series, name := range map[string]string{
				"table_fulls_total": "table_fulls", "allocs_total": "allocs", "destroys_total": "destroys",
				"forced_gc_runs_total": "forced_gc_runs", "periodic_gc_runs_total": "periodic_gc_runs", "resolution_failures_total": "res_failed",
			} {
				k := fmt.Sprintf("netinspect_neighbour_%s{family=%q}", series, fam)
				if v, ok := got[k]; !ok || v < float64(before[fam][name]) || v > float64(after[fam][name]) {
					t.Errorf("%s = %v (present %v), ip says %d before and %d after", k, v, ok, before[fam][name], after[fam][name])
				}
			}
		}
		break
	}
	if first[`netinspect_neighbour_source_info{source="netlink"}`] != 1 {
		t.Errorf("source: %v", first)
	}
	out := strings.TrimSpace(ns.MustRun("ip", "-4", "neigh", "show", "nud", "permanent"))
	if n := len(strings.Split(out, "\n")); n != n4 {
		t.Errorf("ip -4 neigh show nud permanent lists %d entries in the namespace, want %d", n, n4)
	}
}

// TestNeighbourWithoutNetlinkFallsBackToProcFS plays a kernel that does
// not answer RTM_GETNEIGHTBL (the real one always does, so the netlink
// read is replaced): procfs is read, the collector succeeds and says so in
// a debug log, once; with neither, it reports no data.
func TestNeighbourWithoutNetlinkFallsBackToProcFS(t *testing.T) {
	root := t.TempDir()
	stat := "entries  allocs destroys hash_grows  lookups hits  res_failed  rcv_probes_mcast rcv_probes_ucast  periodic_gc_runs forced_gc_runs unresolved_discards table_fulls\n" +
		"0000002a  00000010 00000005 00000001  00000100 00000080  00000002  00000000 00000000  00000030 00000004 00000000 00000003\n" +
		"0000002a  00000001 00000001 00000000  00000010 00000008  00000000  00000000 00000000  00000001 00000000 00000000 00000000\n"
	write := func(path, v string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("net/stat/arp_cache", stat)
	for name, v := range map[string]string{"gc_thresh1": "128", "gc_thresh2": "512", "gc_thresh3": "1024", "gc_interval": "30"} {
		write("sys/net/ipv4/neigh/default/"+name, v+"\n")
	}
	core, logs := observer.New(zapcore.DebugLevel)
	c := must(NewNeighbour(NeighbourConfig{}, Deps{Logger: zap.New(core), Paths: Paths{ProcFS: root}}))(t)
	c.read = func(context.Context, int) ([]neighbour.Table, error) {
		return nil, fmt.Errorf("dump neighbour tables: operation not supported: %w", neighbour.ErrAbsent)
	}
	for range 2 {
		compareSeries(t, gather(t, c), map[string]float64{
			`netinspect_neighbour_entries{family="ipv4"}`:                   42,
			`netinspect_neighbour_gc_threshold{family="ipv4",level="1"}`:    128,
			`netinspect_neighbour_gc_threshold{family="ipv4",level="2"}`:    512,
			`netinspect_neighbour_gc_threshold{family="ipv4",level="3"}`:    1024,
			`netinspect_neighbour_table_fulls_total{family="ipv4"}`:         3,
			`netinspect_neighbour_allocs_total{family="ipv4"}`:              17,
			`netinspect_neighbour_destroys_total{family="ipv4"}`:            6,
			`netinspect_neighbour_forced_gc_runs_total{family="ipv4"}`:      4,
			`netinspect_neighbour_periodic_gc_runs_total{family="ipv4"}`:    49,
			`netinspect_neighbour_resolution_failures_total{family="ipv4"}`: 2,
			`netinspect_neighbour_source_info{source="procfs"}`:             1,
		}, "netinspect_neighbour_")
	}
	if n := logs.FilterMessageSnippet("not read over netlink").Len(); n != 1 {
		t.Errorf("%d debug logs about the fallback, want 1", n)
	}

	empty := must(NewNeighbour(NeighbourConfig{}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: t.TempDir()}}))(t)
	empty.read = c.read
	if _, err := empty.Result(context.Background()); err == nil || !errors.Is(err, ErrNoData) {
		t.Errorf("without netlink and procfs: %v, want ErrNoData", err)
	}
}
