package collector

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/source/ipvs"
	sourcens "github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/test/vm"
)

// BenchmarkVMIPVS boots the VM and runs BenchmarkIPVSGuestScale there
// (IPVS exists only in the guest), logging the guest's benchmark lines:
//
//	go test -run '^$' -bench BenchmarkVMIPVS -benchtime 1x ./collector
//
// With NETINSPECT_VM_PROFILE_DIR set, the guest's memory and CPU profiles
// are written there (ipvs-mem.out, ipvs-cpu.out) for go tool pprof.
func BenchmarkVMIPVS(b *testing.B) {
	profDir := os.Getenv("NETINSPECT_VM_PROFILE_DIR")
	for range b.N {
		cfg := vm.Config{
			Package: ".",
			Run:     "^$",
			Bench:   "^BenchmarkIPVSGuestScale$",
			Args:    []string{"-test.benchmem", "-test.benchtime", "3x"},
			Timeout: 30 * time.Minute,
		}
		if profDir != "" {
			cfg.Bench = "^BenchmarkIPVSGuestScale$/^scrape$"
			cfg.Args = append(cfg.Args, "-test.memprofile", "/tmp/ipvs-mem.out", "-test.cpuprofile", "/tmp/ipvs-cpu.out")
			cfg.Collect = []string{"/tmp/ipvs-mem.out", "/tmp/ipvs-cpu.out"}
		}
		res := vm.Run(b, cfg)
		for path, data := range res.Files {
			dst := filepath.Join(profDir, filepath.Base(path))
			if err := os.WriteFile(dst, data, 0o644); err != nil {
				b.Fatal(err)
			}
			b.Logf("wrote %s", dst)
		}
		// Printed, not logged: the testing package truncates a benchmark's
		// log to a few lines.
		for _, l := range strings.Split(res.Output, "\n") {
			if strings.HasPrefix(l, "Benchmark") || strings.Contains(l, "ipvs_bench_test.go") {
				fmt.Println("guest:", strings.TrimSpace(l))
			}
		}
	}
}

const (
	benchServices = 5000
	benchBackends = 3
)

// BenchmarkIPVSGuestScale runs inside the VM, in the guest's own network
// namespace (the VM is disposable): 5,000 virtual servers x 3 backends made
// as kube-proxy makes them, and an index holding the matching Services and
// EndpointSlices. It compares one scrape of the collector with reading the
// same kernel state through netlink without metrics, and with node_exporter's
// method, reading and parsing /proc/net/ip_vs.
func BenchmarkIPVSGuestScale(b *testing.B) {
	vm.RequireGuest(b)
	h, err := mobyipvs.New("")
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	ix := kube.NewIndex("node1")
	start := time.Now()
	for i := range benchServices {
		vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		svc := &mobyipvs.Service{Address: net.IP(vip.AsSlice()), Protocol: unix.IPPROTO_TCP, Port: 80,
			SchedName: "rr", AddressFamily: unix.AF_INET, Netmask: 0xffffffff}
		if err := h.NewService(svc); err != nil {
			b.Fatalf("service %d: %v", i, err)
		}
		name := fmt.Sprintf("svc-%d", i)
		ix.SetService(kube.ServiceInfo{Namespace: "bench", Name: name, Type: "ClusterIP",
			ClusterIPs: []netip.Addr{vip}, Ports: []kube.ServicePortInfo{{Name: "http", Port: 80, Protocol: "tcp"}}})
		var eps []kube.EndpointInfo
		for j := range benchBackends {
			n := i*benchBackends + j
			be := netip.AddrFrom4([4]byte{10, 244, byte(n >> 8), byte(n)})
			if err := h.NewDestination(svc, &mobyipvs.Destination{Address: net.IP(be.AsSlice()), Port: 8080, Weight: 1, AddressFamily: unix.AF_INET}); err != nil {
				b.Fatalf("backend %d/%d: %v", i, j, err)
			}
			eps = append(eps, kube.EndpointInfo{IP: be, Ready: true, Pod: kube.PodRef{Namespace: "bench", Name: fmt.Sprintf("%s-%d", name, j)}})
		}
		ix.SetEndpointSlice("bench", name+"-x", name, eps)
	}
	b.Logf("created %d virtual servers x %d backends in %s", benchServices, benchBackends, time.Since(start).Round(time.Millisecond))
	b.Cleanup(func() { h.Flush() })

	for _, tc := range []struct {
		name  string
		stats bool
		want  int
	}{
		// Backends from /proc/net/ip_vs: one read for all of them.
		{"scrape", false, benchServices*6 + benchServices*benchBackends*4},
		// Per-backend counters: one netlink request per virtual server.
		{"scrape-backend-stats", true, benchServices*6 + benchServices*benchBackends*9},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c, err := NewIPVS(IPVSConfig{ServiceSeries: ServiceSeriesAll, Backends: true, BackendStats: tc.stats}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}, Index: ix})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			var n int
			for b.Loop() {
				ch := make(chan prometheus.Metric, 1024)
				done := make(chan int)
				go func() {
					k := 0
					for range ch {
						k++
					}
					done <- k
				}()
				if err := c.Update(context.Background(), ch); err != nil {
					b.Fatal(err)
				}
				close(ch)
				n = <-done
			}
			// Per virtual server: five counters and service_info; per
			// backend: active, inactive, weight and backend_info, plus
			// five counters with stats.
			if n != tc.want {
				b.Fatalf("scrape sent %d metrics, want %d", n, tc.want)
			}
		})
	}
	b.Run("netlink-read", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, err := ipvs.Dial(context.Background(), sourcens.Target{})
			if err != nil {
				b.Fatal(err)
			}
			svcs, err := r.Services()
			if err != nil {
				b.Fatal(err)
			}
			var dests []ipvs.Dest
			total := 0
			for i := range svcs {
				if dests, err = r.Dests(&svcs[i], dests[:0]); err != nil {
					b.Fatal(err)
				}
				total += len(dests)
			}
			r.Close()
			if len(svcs) != benchServices || total != benchServices*benchBackends {
				b.Fatalf("read %d services, %d backends", len(svcs), total)
			}
		}
	})
	b.Run("procfs-parse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			f, err := os.Open("/proc/net/ip_vs")
			if err != nil {
				b.Fatal(err)
			}
			svcs, err := ipvs.ParseProc(f)
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
			if len(svcs) != benchServices {
				b.Fatalf("parsed %d services", len(svcs))
			}
		}
	})
}
