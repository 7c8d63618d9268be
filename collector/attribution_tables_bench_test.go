package collector

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/conntrack"
	sourcens "github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
	"github.com/netinspect/netinspect/test/vm"
)

// rawRead dumps the whole conntrack table of ns over netlink and decodes
// nothing: the same request and 64 KiB buffer as the pass's Dumper, one
// recvfrom per datagram until the one holding NLMSG_DONE, looking at no
// more than each datagram's first message header. It is the floor a pass
// cannot go below: the kernel building the dump and the copies to user
// space. It returns the bytes read.
func rawRead(b *testing.B, target interface{ Do(func() error) error }) int {
	var fd int
	if err := target.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	req := binary.NativeEndian.AppendUint32(nil, unix.SizeofNlMsghdr+4)
	req = binary.NativeEndian.AppendUint16(req, 1<<8|1) // NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET
	req = binary.NativeEndian.AppendUint16(req, unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	req = binary.NativeEndian.AppendUint32(req, 1)
	req = binary.NativeEndian.AppendUint32(req, 0)
	req = append(req, unix.AF_UNSPEC, 0, 0, 0)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	total := 0
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			b.Fatal(err)
		}
		total += n
		if n >= unix.SizeofNlMsghdr && binary.NativeEndian.Uint16(buf[4:6]) == unix.NLMSG_DONE {
			return total
		}
	}
}

// benchPassVsRaw times, in each iteration, a pass of a and a raw read of
// the same table back to back (both under the same load), and reports
// both, their ratio (the goal: at most 1.2, or below 1 for a split pass),
// ns per entry of each, and the pass's peak heap.
//
// On a machine shared with other work the wall times are upper bounds; the
// CPU times (user and system of this process: the kernel builds the dump
// inside the reader's recvmsg calls, so it is counted too) say what each
// costs whatever the load.
func benchPassVsRaw(b *testing.B, a *Attribution, target interface{ Do(func() error) error }, size int, check func(*AttributionResult)) {
	var pass, raw, passCPU, rawCPU time.Duration
	var peak uint64
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		runtime.GC()
		stop := sampleHeap()
		b.StartTimer()
		cpu0, start := processCPU(b), time.Now()
		if err := a.Pass(context.Background()); err != nil {
			b.Fatal(err)
		}
		pass += time.Since(start)
		passCPU += processCPU(b) - cpu0
		b.StopTimer()
		peak = max(peak, stop())
		check(a.r.Snapshot().Value)
		cpu0, start = processCPU(b), time.Now()
		rawRead(b, target)
		raw += time.Since(start)
		rawCPU += processCPU(b) - cpu0
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(pass.Seconds()/n, "pass-s/op")
	b.ReportMetric(raw.Seconds()/n, "raw-s/op")
	b.ReportMetric(pass.Seconds()/raw.Seconds(), "pass/raw")
	b.ReportMetric(passCPU.Seconds()/rawCPU.Seconds(), "pass/raw-cpu")
	b.ReportMetric(float64(pass.Nanoseconds())/n/float64(size), "pass-ns/entry")
	b.ReportMetric(float64(raw.Nanoseconds())/n/float64(size), "raw-ns/entry")
	b.ReportMetric(float64(passCPU.Nanoseconds())/n/float64(size), "pass-cpu-ns/entry")
	b.ReportMetric(float64(rawCPU.Nanoseconds())/n/float64(size), "raw-cpu-ns/entry")
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
}

// fullTableEndpoints gives every service of fullTableIndex serving
// endpoints: the b pods on every port of every level (UDP entries DNATed
// to them are then not stale; those of clients p4..p7, which were not
// DNATed, still are).
func fullTableEndpoints(ix *kube.Index) {
	for i := range fullServices {
		var ports []kube.EndpointPort
		for level := range 4 {
			for _, proto := range []string{"tcp", "udp"} {
				ports = append(ports, kube.EndpointPort{Name: fmt.Sprintf("%s-%d", proto, level), Port: uint16(8080 + level), Protocol: proto})
			}
		}
		ix.SetEndpointSlice("load", fmt.Sprintf("s%d-1", i), fmt.Sprintf("s%d", i), []kube.EndpointInfo{{
			IP: netip.AddrFrom4([4]byte{10, 244, 2, byte(i + 1)}), Ready: true, Serving: true, Node: attrNode, Ports: ports,
		}})
	}
}

// BenchmarkAttributionPassVsRawRead is the pass with stale and SNAT
// counting at 262,144 entries in one namespace, against the raw netlink
// read of the same table in the same iteration. The table is
// BenchmarkAttributionPass's (all entries alike, so the pass cannot be
// split). "stale-all": the Services have no endpoints, so kube-proxy would
// delete every UDP entry to them (half the table goes through the stale
// path); "healthy": their endpoints serve the DNATed half.
//
//	go test -run '^$' -bench BenchmarkAttributionPassVsRawRead -benchtime 5x ./collector
func BenchmarkAttributionPassVsRawRead(b *testing.B) {
	testenv.RequireCommand(b, "conntrack")
	ns := netns.New(b, "attr-raw")
	const size = 262144
	fillFlows(b, ns, fullTableSpecs(0, size/fullClients))
	if n := conntrackCount(b, ns); n != size {
		b.Fatalf("conntrack -C = %d, want %d", n, size)
	}
	for _, tc := range []struct {
		name      string
		endpoints bool
		stale     uint64
	}{
		{"stale-all", false, size / 2},
		{"healthy", true, size / 4},
	} {
		ix := fullTableIndex()
		if tc.endpoints {
			fullTableEndpoints(ix)
		}
		b.Run(fmt.Sprintf("entries=%d/%s", size, tc.name), func(b *testing.B) {
			a := in(must(NewAttribution(AttributionConfig{}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix}))(b), ns)
			benchPassVsRaw(b, a, ns, size, func(r *AttributionResult) {
				if r.Scanned != size || r.Dumps != 1 || r.Stale.Entries != tc.stale {
					b.Fatalf("pass scanned %d entries in %d dumps, %d stale; want %d, 1, %d", r.Scanned, r.Dumps, r.Stale.Entries, size, tc.stale)
				}
			})
		})
	}
	b.Run(fmt.Sprintf("entries=%d/raw-read", size), func(b *testing.B) {
		for b.Loop() {
			rawRead(b, ns)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/size, "ns/entry")
	})
}

// BenchmarkAttributionPassNATTableVsRawRead is the pass at 262,144 entries
// made by real traffic: a quarter DNATed (IPS_DST_NAT), a quarter direct,
// half source-NATed to 65,535 destination ports (IPS_SRC_NAT: 65,535 SNAT
// tuples, near the counter's exact capacity), so the pass splits in two
// dumps read at once (on IPS_SRC_NAT): "split" against the one raw read,
// and "one-dump" with splitting off.
func BenchmarkAttributionPassNATTableVsRawRead(b *testing.B) {
	testenv.RequireCommand(b, "conntrack")
	ns := netns.New(b, "attr-natraw")
	const size = 262144
	sendNATTraffic(b, ns, size/4)
	sendSNATTraffic(b, ns, size/2)
	if n := conntrackCount(b, ns); n != size {
		b.Fatalf("conntrack -C = %d, want %d", n, size)
	}
	const total = size
	for _, split := range []bool{true, false} {
		name := "split"
		if !split {
			name = "one-dump"
		}
		b.Run(fmt.Sprintf("entries=%d/%s", total, name), func(b *testing.B) {
			a := in(must(NewAttribution(AttributionConfig{}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: attributionIndex()}))(b), ns)
			a.scanner.NoSplit = !split
			if err := a.Pass(context.Background()); err != nil { // learns the status bits
				b.Fatal(err)
			}
			benchPassVsRaw(b, a, ns, total, func(r *AttributionResult) {
				if r.Scanned != total || (r.Dumps == 2) != split || r.SNAT.Entries != size/2 {
					b.Fatalf("pass scanned %d entries in %d dumps, %d SNAT", r.Scanned, r.Dumps, r.SNAT.Entries)
				}
			})
		})
	}
}

// sendSNATTraffic sends, from 10.244.0.12 in ns (set up by sendNATTraffic),
// one UDP datagram to each of n ports of 10.244.0.22, which an nft rule
// source-NATs to 10.244.0.13: n entries with IPS_SRC_NAT, one SNAT tuple
// per destination port.
func sendSNATTraffic(b testing.TB, ns *netns.NS, n int) {
	b.Helper()
	ns.MustRun("ip", "addr", "add", "10.244.0.12/24", "dev", "n0")
	ns.MustRun("ip", "addr", "add", "10.244.0.13/24", "dev", "n0")
	ns.MustRun("ip", "neigh", "add", "10.244.0.22", "lladdr", "02:00:00:00:00:01", "dev", "n0", "nud", "permanent")
	ns.MustRun("nft", "add chain ip nat post { type nat hook postrouting priority 100 ; }")
	ns.MustRun("nft", "add rule ip nat post ip saddr 10.244.0.12 ip daddr 10.244.0.22 snat to 10.244.0.13")
	err := ns.Do(func() error {
		conns := make([]*net.UDPConn, (n+65534)/65535)
		for i := range conns {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.244.0.12")})
			if err != nil {
				return err
			}
			defer c.Close()
			conns[i] = c
		}
		for i := 0; i < n; i++ {
			to := &net.UDPAddr{IP: net.ParseIP("10.244.0.22"), Port: 1 + i%65535}
			if _, err := conns[i/65535].WriteToUDP([]byte("x"), to); err != nil {
				return fmt.Errorf("send to %v: %w", to, err)
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkVMAttributionMillion boots the VM and runs
// BenchmarkAttributionGuestMillion there: a table of 1,048,576 entries,
// the largest kube-proxy configures, needs nf_conntrack_max above the
// host's, which only the initial namespace can change, so only a kernel the
// test owns. It prints the guest's benchmark lines:
//
//	go test -run '^$' -bench BenchmarkVMAttributionMillion -benchtime 1x -timeout 3h ./collector
//
// The guest is qemu's software emulation (TCG): its times are many times
// the host's; what it shows is the ratios and the heap, measured there
// against the guest's own raw read.
func BenchmarkVMAttributionMillion(b *testing.B) {
	for range b.N {
		res := vm.Run(b, vm.Config{
			Package:   ".",
			Run:       "^$",
			Bench:     "^BenchmarkAttributionGuestMillion$",
			Args:      []string{"-test.benchmem", "-test.benchtime", "3x", "-test.timeout", "150m"},
			MemoryMiB: 4096,
			Timeout:   160 * time.Minute,
		})
		for _, l := range strings.Split(res.Output, "\n") {
			if strings.HasPrefix(l, "Benchmark") || strings.Contains(l, "attribution_tables_bench_test.go") {
				fmt.Println("guest:", strings.TrimSpace(l))
			}
		}
	}
}

// BenchmarkAttributionGuestMillion runs inside the VM, in the guest's own
// network namespace (the VM is disposable): nf_conntrack_max raised to
// 1,048,576 with kube-proxy's hash size (max/4), the table filled through
// ctnetlink with BenchmarkAttributionPassVsRawRead's flows (stale-all),
// then the pass against the raw read; "split" marks half the entries
// assured so the pass reads two halves at once.
func BenchmarkAttributionGuestMillion(b *testing.B) {
	vm.RequireGuest(b)
	const size = 1 << 20
	for path, v := range map[string]string{
		"/proc/sys/net/netfilter/nf_conntrack_max":     fmt.Sprint(size + size/16),
		"/sys/module/nf_conntrack/parameters/hashsize": fmt.Sprint(size / 4),
	} {
		if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
			b.Fatalf("write %s: %v", path, err)
		}
	}
	start := time.Now()
	specs := fullTableSpecs(0, size/fullClients)
	for i := range specs {
		specs[i].Assured = i%2 == 0
		// The fill takes minutes under emulation: no entry may expire
		// before the passes are done.
		specs[i].TimeoutSeconds = 6 * 3600
	}
	for _, s := range specs {
		if n, err := ctfill.Create(0, s); err != nil || n != s.Count {
			b.Fatalf("created %d of %d: %v", n, s.Count, err)
		}
	}
	entries, _, err := conntrack.ReadCount(context.Background(), sourcens.Target{})
	if err != nil || entries != size {
		b.Fatalf("table holds %d entries (%v), want %d", entries, err, size)
	}
	b.Logf("filled %d entries in %s", size, time.Since(start).Round(time.Second))
	own := sourcens.Target{}
	for _, split := range []bool{false, true} {
		name := "one-dump"
		if split {
			name = "split"
		}
		b.Run(fmt.Sprintf("entries=%d/%s", size, name), func(b *testing.B) {
			a := must(NewAttribution(AttributionConfig{Interval: time.Hour}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: fullTableIndex()}))(b)
			a.scanner.NoSplit = !split
			if err := a.Pass(context.Background()); err != nil {
				b.Fatal(err)
			}
			benchPassVsRaw(b, a, own, size, func(r *AttributionResult) {
				if r.Scanned != size || (r.Dumps == 2) != split {
					b.Fatalf("pass scanned %d entries in %d dumps", r.Scanned, r.Dumps)
				}
			})
		})
	}
}
