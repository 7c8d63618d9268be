package kubeproxy_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/netinspect/netinspect/kube/index"

	. "github.com/netinspect/netinspect/kubeproxy"
)

// benchIndex is a cluster of n ClusterIP Services with one port and eps
// ready endpoints each, some on this node.
func benchIndex(n, eps int) *index.Index {
	ix := index.NewIndex(testNode)
	ix.SetNodeZone(testZone)
	k := 0
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		ix.SetService(svc(func(s *index.ServiceInfo) {
			s.Namespace, s.Name = fmt.Sprintf("team-%d", i%50), name
			s.ClusterIPs = addrs(fmt.Sprintf("10.%d.%d.%d", 96+i/65536, (i/256)%256, i%256))
		}))
		var list []index.EndpointInfo
		for range eps {
			node := fmt.Sprintf("node-%d", k%100)
			if k%100 == 0 {
				node = testNode
			}
			list = append(list, ep(fmt.Sprintf("10.%d.%d.%d", 128+k/65536, (k/256)%256, k%256), node))
			k++
		}
		ix.SetEndpointSlice(fmt.Sprintf("team-%d", i%50), name+"-abcde", name, list)
	}
	return ix
}

// BenchmarkDrift is one refresh's drift work once the rules are parsed:
// recompute the expectation from the index, compare it with an iptables
// listing of the same cluster, feed the tracker. It reports the heap the
// expectation keeps between rounds (expectation-MiB); B/op is the garbage
// of one round.
func BenchmarkDrift(b *testing.B) {
	for _, size := range []struct{ services, endpoints int }{{10000, 3}, {40000, 6}} {
		b.Run(fmt.Sprintf("%dx%d", size.services, size.endpoints), func(b *testing.B) {
			ix := benchIndex(size.services, size.endpoints)
			l := programmedAsExpected(Expect(ix), IPv4)
			tr, err := NewDriftTracker(DefaultDriftConfig(30 * time.Second))
			if err != nil {
				b.Fatal(err)
			}
			var e Expectation
			base := heapAlloc()
			ExpectInto(&e, ix)
			kept := heapAlloc() - base
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				ExpectInto(&e, ix)
				c := e.CompareIPTables(IPv4, l)
				if len(c.Mismatches) != 0 {
					b.Fatalf("%d mismatches", len(c.Mismatches))
				}
				tr.Observe(time.Now(), 0, c)
			}
			b.ReportMetric(float64(kept)/(1<<20), "expectation-MiB")
		})
	}
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
