package neighbour

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// ipTable is one table as `ip -s ntable show` prints it (its first block,
// the table's own; the blocks of devices follow).
type ipTable struct {
	entries, thresh1, thresh2, thresh3, gcIntervalMS uint64
	stats                                            map[string]uint64
}

// ipNtableShow runs `ip -s ntable show` (in ns, or on the host when ns is
// nil) and returns its tables by family.
func ipNtableShow(t *testing.T, ns *netns.NS) map[string]ipTable {
	t.Helper()
	var out string
	if ns != nil {
		out = ns.MustRun("ip", "-s", "ntable", "show")
	} else {
		b, err := exec.Command("ip", "-s", "ntable", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("ip -s ntable show: %v: %s", err, b)
		}
		out = string(b)
	}
	tables := map[string]ipTable{}
	for _, block := range strings.Split(out, "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		if len(lines) < 2 || strings.HasPrefix(strings.TrimSpace(lines[1]), "dev ") {
			continue
		}
		family := map[string]string{"inet": FamilyIPv4, "inet6": FamilyIPv6}[strings.Fields(lines[0])[0]]
		if family == "" {
			continue
		}
		kv := map[string]uint64{}
		for _, line := range lines[1:] {
			f := strings.Fields(line)
			if len(f) > 0 && (f[0] == "config" || f[0] == "stats") {
				f = f[1:]
			}
			if len(f) > 0 && f[0] == "last_flush" {
				continue // dates
			}
			for i := 0; i+1 < len(f); i += 2 {
				if v, err := strconv.ParseUint(f[i+1], 10, 64); err == nil {
					kv[f[i]] = v
				}
			}
		}
		tables[family] = ipTable{entries: kv["entries"], thresh1: kv["thresh1"], thresh2: kv["thresh2"], thresh3: kv["thresh3"],
			gcIntervalMS: kv["gc_int"], stats: kv}
	}
	if len(tables) == 0 {
		t.Fatalf("no tables in `ip -s ntable show`: %q", out)
	}
	return tables
}

// snapshot is one reading taken between two readings by ip that agree on
// every table's entry count, so that all three show the same instant.
type snapshot struct {
	before, after map[string]ipTable
	ours          []Table
}

// stableRead reads with read between two `ip -s ntable show`, retrying
// (bounded) while other namespaces' neighbours change the count meanwhile.
func stableRead(t *testing.T, ns *netns.NS, read func() ([]Table, error)) snapshot {
	t.Helper()
	const attempts = 20
	for i := 0; i < attempts; i++ {
		before := ipNtableShow(t, ns)
		ours, err := read()
		if err != nil {
			t.Fatal(err)
		}
		after := ipNtableShow(t, ns)
		same := len(before) == len(after)
		for f, b := range before {
			same = same && after[f].entries == b.entries
		}
		if same {
			return snapshot{before: before, after: after, ours: ours}
		}
		time.Sleep(time.Duration(i+1) * 20 * time.Millisecond)
	}
	t.Fatalf("the neighbour tables changed during each of %d readings", attempts)
	return snapshot{}
}

// check compares the reading with ip's: the same entries and thresholds,
// counters between ip's before and after, and every table from source.
func (s snapshot) check(t *testing.T, source string) {
	t.Helper()
	if len(s.ours) != len(s.before) {
		t.Errorf("read %d tables, ip shows %d", len(s.ours), len(s.before))
	}
	for _, tbl := range s.ours {
		if tbl.Source != source {
			t.Errorf("%s: source %q, want %q", tbl.Name, tbl.Source, source)
		}
		b, a := s.before[tbl.Family], s.after[tbl.Family]
		if tbl.Entries != b.entries {
			t.Errorf("%s: entries %d, ip -s ntable show says %d", tbl.Name, tbl.Entries, b.entries)
		}
		if tbl.GCThresh1 != b.thresh1 || tbl.GCThresh2 != b.thresh2 || tbl.GCThresh3 != b.thresh3 || tbl.GCInterval != time.Duration(b.gcIntervalMS)*time.Millisecond {
			t.Errorf("%s: thresholds %d/%d/%d interval %v, ip says %d/%d/%d %dms", tbl.Name, tbl.GCThresh1, tbl.GCThresh2, tbl.GCThresh3, tbl.GCInterval,
				b.thresh1, b.thresh2, b.thresh3, b.gcIntervalMS)
		}
		for name, v := range map[string]uint64{
			"allocs": tbl.Stats.Allocs, "destroys": tbl.Stats.Destroys, "hash_grows": tbl.Stats.HashGrows,
			"res_failed": tbl.Stats.ResFailed, "lookups": tbl.Stats.Lookups, "hits": tbl.Stats.Hits,
			"rcv_probes_mcast": tbl.Stats.RcvProbesMcast, "rcv_probes_ucast": tbl.Stats.RcvProbesUcast,
			"periodic_gc_runs": tbl.Stats.PeriodicGCRuns, "forced_gc_runs": tbl.Stats.ForcedGCRuns, "table_fulls": tbl.Stats.TableFulls,
		} {
			if v < b.stats[name] || v > a.stats[name] {
				t.Errorf("%s: %s = %d, ip says %d before and %d after", tbl.Name, name, v, b.stats[name], a.stats[name])
			}
		}
		if !tbl.Stats.HasTableFulls {
			t.Errorf("%s: a 6.x kernel reports table_fulls", tbl.Name)
		}
	}
}

func readNetlink(netnsFD int) func() ([]Table, error) {
	return func() ([]Table, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return Read(ctx, netnsFD)
	}
}

func requireIP(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
}

func TestReadMatchesIPNtableShow(t *testing.T) {
	requireIP(t)
	stableRead(t, nil, readNetlink(0)).check(t, SourceNetlink)
}

// TestReadFromANamespaceSeesTheGlobalTables: a namespace's reading is the
// host's, since the tables are global.
func TestReadFromANamespaceSeesTheGlobalTables(t *testing.T) {
	requireIP(t)
	ns := netns.New(t, "ntbl")
	stableRead(t, ns, readNetlink(ns.FD())).check(t, SourceNetlink)
	// Against the host's own ip, too: the same tables.
	stableRead(t, nil, readNetlink(ns.FD())).check(t, SourceNetlink)
}

// TestReadProcFSMatchesIPNtableShow reads the fallback in the test's own
// namespace (the initial one, where the files exist).
func TestReadProcFSMatchesIPNtableShow(t *testing.T) {
	requireIP(t)
	stableRead(t, nil, func() ([]Table, error) { return ReadProcFS("/proc") }).check(t, SourceProcFS)
}

// TestPermanentEntriesRaiseTheTotalByExactlyThatMany adds permanent
// neighbours in test namespaces (never touching the thresholds) and checks
// that the global total grew by exactly that many, each reading taken
// between two agreeing readings of `ip -s ntable show`. Other namespaces'
// neighbours come and go on a shared host: when ip's own count moved by
// another amount the measurement is repeated, a bounded number of times.
func TestPermanentEntriesRaiseTheTotalByExactlyThatMany(t *testing.T) {
	requireIP(t)
	const perNS4, perNS6 = 37, 23
	nss := []*netns.NS{netns.New(t, "nperm-a"), netns.New(t, "nperm-b")}
	for _, ns := range nss {
		// No addresses and no IPv6 link-local address: the namespace sends
		// nothing, so it creates no neighbour entries of its own.
		ns.MustRun("ip", "link", "add", "n0", "type", "veth", "peer", "name", "n1")
		for _, dev := range []string{"n0", "n1"} {
			ns.MustRun("ip", "link", "set", dev, "addrgenmode", "none")
			ns.MustRun("ip", "link", "set", dev, "up")
		}
	}
	entries := func(s snapshot) (ours, ip map[string]uint64) {
		ours, ip = map[string]uint64{}, map[string]uint64{}
		for _, tbl := range s.ours {
			ours[tbl.Family] = tbl.Entries
		}
		for f, tbl := range s.before {
			ip[f] = tbl.entries
		}
		return ours, ip
	}
	want := map[string]uint64{FamilyIPv4: perNS4 * uint64(len(nss)), FamilyIPv6: perNS6 * uint64(len(nss))}
	const attempts = 5
	for attempt := 1; ; attempt++ {
		before := stableRead(t, nil, readNetlink(0))
		before.check(t, SourceNetlink)
		for i, ns := range nss {
			addPermanentNeighbours(t, ns, i, perNS4, perNS6)
		}
		after := stableRead(t, nil, readNetlink(nss[0].FD()))
		after.check(t, SourceNetlink)
		ob, ib := entries(before)
		oa, ia := entries(after)
		hostMoved := false
		for f, w := range want {
			if ia[f]-ib[f] != w {
				hostMoved = true
				continue
			}
			if oa[f]-ob[f] != w {
				t.Errorf("%s: total went from %d to %d, want +%d (ip: %d to %d)", f, ob[f], oa[f], w, ib[f], ia[f])
			}
		}
		if !hostMoved {
			t.Logf("attempt %d: ipv4 %d -> %d, ipv6 %d -> %d", attempt, ob[FamilyIPv4], oa[FamilyIPv4], ob[FamilyIPv6], oa[FamilyIPv6])
			break
		}
		if attempt == attempts {
			t.Fatalf("other neighbours changed the total during each of %d attempts (last: ipv4 %d -> %d, ipv6 %d -> %d)",
				attempts, ib[FamilyIPv4], ia[FamilyIPv4], ib[FamilyIPv6], ia[FamilyIPv6])
		}
		for _, ns := range nss {
			ns.MustRun("ip", "neigh", "flush", "dev", "n0", "nud", "permanent")
			ns.MustRun("ip", "-6", "neigh", "flush", "dev", "n0", "nud", "permanent")
		}
	}
	// The namespaces' own view: exactly the entries added.
	for _, ns := range nss {
		for _, fam := range []struct {
			flag string
			want int
		}{{"-4", perNS4}, {"-6", perNS6}} {
			out := strings.TrimSpace(ns.MustRun("ip", fam.flag, "neigh", "show", "nud", "permanent"))
			if n := len(strings.Split(out, "\n")); n != fam.want {
				t.Errorf("%s: ip %s neigh show lists %d permanent entries, want %d", ns.Name, fam.flag, n, fam.want)
			}
		}
	}
}

// addPermanentNeighbours adds n4 IPv4 and n6 IPv6 permanent neighbours on
// n0 in ns, with addresses distinct per namespace index i, in one `ip
// -batch` each.
func addPermanentNeighbours(t *testing.T, ns *netns.NS, i, n4, n6 int) {
	t.Helper()
	var b strings.Builder
	v4 := netip.MustParseAddr(fmt.Sprintf("10.%d.0.1", 200+i))
	v6 := netip.MustParseAddr(fmt.Sprintf("fd00:%x::1", 0x200+i))
	for range n4 {
		fmt.Fprintf(&b, "neigh add %s lladdr 02:00:00:00:00:01 dev n0 nud permanent\n", v4)
		v4 = v4.Next()
	}
	for range n6 {
		fmt.Fprintf(&b, "neigh add %s lladdr 02:00:00:00:00:01 dev n0 nud permanent\n", v6)
		v6 = v6.Next()
	}
	ns.MustRun("bash", "-c", "ip -batch - <<'EOF'\n"+b.String()+"EOF")
}

// BenchmarkRead is what a scrape pays for the neighbour tables over
// netlink and from procfs, next to the baseline of `ip -s ntable show`.
func BenchmarkRead(b *testing.B) {
	testenv.RequireRoot(b)
	b.Run("netlink", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Read(context.Background(), 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("procfs", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ReadProcFS("/proc"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-ip-ntable", func(b *testing.B) {
		testenv.RequireCommand(b, "ip")
		for b.Loop() {
			if err := exec.Command("ip", "-s", "ntable", "show").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
