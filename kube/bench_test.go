package kube

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// fixture builds API objects shaped like a real cluster's: pods with
// labels, annotations and managed fields, services with one port and the
// fields the API server defaults (ipFamilies, internalTrafficPolicy,
// sessionAffinity), slices of four endpoints with the three conditions the
// endpointslice controller sets.
func fixturePods(n int, node string) []*corev1.Pod {
	out := make([]*corev1.Pod, n)
	for i := range out {
		ip := fmt.Sprintf("10.%d.%d.%d", 64+i/65536, (i/256)%256, i%256)
		out[i] = &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name: fmt.Sprintf("web-%d-7d9f8c6b5-x%05d", i/10, i), Namespace: fmt.Sprintf("team-%d", i%50),
				UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", i)), ResourceVersion: "12345",
				Labels:      map[string]string{"app.kubernetes.io/name": "web", "pod-template-hash": "7d9f8c6b5", "team": fmt.Sprint(i % 50)},
				Annotations: map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
				ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: "Update", APIVersion: "v1",
					FieldsV1: &metav1.FieldsV1{Raw: make([]byte, 600)}}},
			},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "web", Image: "registry.example/web:1.2.3",
				Env: []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "B", Value: "2"}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		}
	}
	return out
}

func fixtureServices(n int) []*corev1.Service {
	out := make([]*corev1.Service, n)
	for i := range out {
		ip := fmt.Sprintf("10.96.%d.%d", i/256, i%256)
		itp := corev1.ServiceInternalTrafficPolicyCluster
		out[i] = &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i), Namespace: fmt.Sprintf("team-%d", i%50), ResourceVersion: "1",
				Labels: map[string]string{"app": "web"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl", FieldsV1: &metav1.FieldsV1{Raw: make([]byte, 300)}}}},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip}, Selector: map[string]string{"app": "web"},
				IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}, InternalTrafficPolicy: &itp, SessionAffinity: corev1.ServiceAffinityNone,
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		}
	}
	return out
}

func fixtureSlices(services, perSlice int) []*discoveryv1.EndpointSlice {
	out := make([]*discoveryv1.EndpointSlice, services)
	name, port, proto := "http", int32(8080), corev1.ProtocolTCP
	ready, serving, terminating := true, true, false
	k := 0
	for i := range out {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d-abcde", i), Namespace: fmt.Sprintf("team-%d", i%50), ResourceVersion: "1",
				Labels: map[string]string{discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", i), discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		}
		for j := 0; j < perSlice; j++ {
			node := fmt.Sprintf("node-%d", k%100)
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 128+k/65536, (k/256)%256, k%256)},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
				NodeName:   &node,
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: es.Namespace, Name: fmt.Sprintf("backend-%d", k), UID: types.UID(fmt.Sprint(k))},
			})
			k++
		}
		out[i] = es
	}
	return out
}

// wire encodes objects as the API server sends them (protobuf), so the
// benchmarks decode fresh objects as an informer does and measure only what
// the transforms keep, not strings shared with the fixture.
type wireObj interface{ Marshal() ([]byte, error) }

func wire[T wireObj](objs []T) [][]byte {
	out := make([][]byte, len(objs))
	for i, o := range objs {
		b, err := o.Marshal()
		if err != nil {
			panic(err)
		}
		out[i] = b
	}
	return out
}

func decodePod(b []byte) *corev1.Pod {
	p := &corev1.Pod{}
	if err := p.Unmarshal(b); err != nil {
		panic(err)
	}
	return p
}

func decodeService(b []byte) *corev1.Service {
	s := &corev1.Service{}
	if err := s.Unmarshal(b); err != nil {
		panic(err)
	}
	return s
}

func decodeSlice(b []byte) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{}
	if err := s.Unmarshal(b); err != nil {
		panic(err)
	}
	return s
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkBuildIndex does what the informers do for 10,000 pods, 5,000
// services and 20,000 endpoints (5,000 slices of 4): decode each object from
// protobuf, strip it with its transform, store it in an informer store, and
// add it to the index. It reports the heap the stores and index keep
// (retained-MiB).
func BenchmarkBuildIndex(b *testing.B) {
	pods, svcs, slices := wire(fixturePods(10000, "node-a")), wire(fixtureServices(5000)), wire(fixtureSlices(5000, 4))
	w := &Watcher{cfg: Config{PodLabels: ParseLabelAllowlist("app.kubernetes.io/name")}}
	b.ReportAllocs()
	var retained uint64
	for b.Loop() {
		before := heapInUse()
		ix := NewIndex("node-a")
		podStore := cache.NewStore(cache.MetaNamespaceKeyFunc)
		svcStore := cache.NewStore(cache.MetaNamespaceKeyFunc)
		sliceStore := cache.NewStore(cache.MetaNamespaceKeyFunc)
		for _, p := range pods {
			o, _ := w.slimPod(decodePod(p))
			_ = podStore.Add(o)
			ix.SetPod(PodInfoFromPod(o.(*corev1.Pod)))
		}
		for _, s := range svcs {
			o, _ := slimService(decodeService(s))
			_ = svcStore.Add(o)
			ix.SetService(ServiceInfoFromService(o.(*corev1.Service)))
		}
		for _, es := range slices {
			o, _ := slimEndpointSlice(decodeSlice(es))
			_ = sliceStore.Add(o)
			s := o.(*discoveryv1.EndpointSlice)
			ix.SetEndpointSlice(s.Namespace, s.Name, s.Labels[discoveryv1.LabelServiceName], EndpointsFromSlice(s))
		}
		retained = heapInUse() - before
		runtime.KeepAlive(ix)
		runtime.KeepAlive(podStore)
		runtime.KeepAlive(svcStore)
		runtime.KeepAlive(sliceStore)
	}
	b.ReportMetric(float64(retained)/(1<<20), "retained-MiB")
}

// BenchmarkIndexMemory reports the heap kept per 1,000 services (one port,
// with their informer store) and per 10,000 endpoints (slices of 4, with
// store), for the README's sizing table.
func BenchmarkIndexMemory(b *testing.B) {
	svcs, slices := wire(fixtureServices(5000)), wire(fixtureSlices(5000, 4))
	var perSvc, perEp float64
	for b.Loop() {
		before := heapInUse()
		ix := NewIndex("node-a")
		st := cache.NewStore(cache.MetaNamespaceKeyFunc)
		for _, s := range svcs {
			o, _ := slimService(decodeService(s))
			_ = st.Add(o)
			ix.SetService(ServiceInfoFromService(o.(*corev1.Service)))
		}
		mid := heapInUse()
		st2 := cache.NewStore(cache.MetaNamespaceKeyFunc)
		for _, es := range slices {
			o, _ := slimEndpointSlice(decodeSlice(es))
			_ = st2.Add(o)
			s := o.(*discoveryv1.EndpointSlice)
			ix.SetEndpointSlice(s.Namespace, s.Name, s.Labels[discoveryv1.LabelServiceName], EndpointsFromSlice(s))
		}
		after := heapInUse()
		perSvc = float64(mid-before) / 5 / (1 << 20)
		perEp = float64(after-mid) / 2 / (1 << 20)
		runtime.KeepAlive(ix)
		runtime.KeepAlive(st)
		runtime.KeepAlive(st2)
	}
	b.ReportMetric(perSvc, "MiB/1k-services")
	b.ReportMetric(perEp, "MiB/10k-endpoints")
}

func BenchmarkLookup(b *testing.B) {
	ix := NewIndex("node-a")
	for _, p := range fixturePods(10000, "node-a") {
		ix.SetPod(PodInfoFromPod(p))
	}
	for _, s := range fixtureServices(5000) {
		ix.SetService(ServiceInfoFromService(s))
	}
	for _, es := range fixtureSlices(5000, 4) {
		ix.SetEndpointSlice(es.Namespace, es.Name, es.Labels[discoveryv1.LabelServiceName], EndpointsFromSlice(es))
	}
	pod := netip.MustParseAddr("10.64.10.10")
	svc := netip.MustParseAddr("10.96.3.3")
	ep := netip.MustParseAddr("10.128.1.1")
	miss := netip.MustParseAddr("192.0.2.1")
	b.Run("PodByIP", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := ix.PodByIP(pod); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("PodByIP-miss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ix.PodByIP(miss)
		}
	})
	b.Run("EndpointPodByIP", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := ix.EndpointPodByIP(ep); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("ServiceByAddrPort", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := ix.ServiceByAddrPort("tcp", svc, 80); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("Batch4", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ix.Batch(func(l Lookup) {
				l.PodByIP(pod)
				l.EndpointPodByIP(ep)
				l.ServiceByAddrPort("tcp", svc, 80)
				l.PodByIP(miss)
			})
		}
	})
	b.Run("ServiceByAddrPort-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				ix.ServiceByAddrPort("tcp", svc, 80)
			}
		})
	})
}
