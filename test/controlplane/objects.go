package controlplane

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

func (cp *ControlPlane) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// CreateNode creates a Node and sets its status addresses to internalIPs
// (kube-proxy programs rules only once its Node has an InternalIP).
func (cp *ControlPlane) CreateNode(t testing.TB, name string, internalIPs ...string) *corev1.Node {
	t.Helper()
	return CreateNodeWith(t, cp.Client, name, internalIPs...)
}

// CreateNodeWith is CreateNode through client (a test that has only a
// kubeconfig, such as one inside the qemu VM).
func CreateNodeWith(t testing.TB, client kubernetes.Interface, name string, internalIPs ...string) *corev1.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	for _, ip := range internalIPs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(), Reason: "KubeletReady"}}
	n, err = client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("set status of node %s: %v", name, err)
	}
	return n
}

// PodSpec describes a pod for CreatePod.
type PodSpec struct {
	Namespace, Name string
	Node            string
	IPs             []string // status.podIPs, in order (first is status.podIP)
	Labels          map[string]string
	HostNetwork     bool
}

// CreatePod creates a pod bound to spec.Node (no scheduler runs) and sets
// its status to Running with the given IPs, as a kubelet would. The
// namespace is created if missing.
func (cp *ControlPlane) CreatePod(t testing.TB, s PodSpec) *corev1.Pod {
	t.Helper()
	ctx, cancel := cp.ctx()
	defer cancel()
	cp.EnsureNamespace(t, s.Namespace)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, Labels: s.Labels},
		Spec: corev1.PodSpec{
			NodeName:    s.Node,
			HostNetwork: s.HostNetwork,
			Containers:  []corev1.Container{{Name: "c", Image: "registry.invalid/none"}},
		},
	}
	p, err := cp.Client.CoreV1().Pods(s.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", s.Namespace, s.Name, err)
	}
	return cp.SetPodIPs(t, p, s.IPs...)
}

// SetPodIPs sets a pod's status to Running with the given IPs.
func (cp *ControlPlane) SetPodIPs(t testing.TB, p *corev1.Pod, ips ...string) *corev1.Pod {
	t.Helper()
	ctx, cancel := cp.ctx()
	defer cancel()
	p = p.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP, p.Status.PodIPs = "", nil
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	p, err := cp.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("set status of pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	return p
}

// DeletePod deletes a pod at once (no kubelet runs to finish it).
func (cp *ControlPlane) DeletePod(t testing.TB, namespace, name string) {
	t.Helper()
	ctx, cancel := cp.ctx()
	defer cancel()
	zero := int64(0)
	err := cp.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete pod %s/%s: %v", namespace, name, err)
	}
}

// ServicePort is a port for CreateService.
type ServicePort struct {
	Name       string
	Port       int32
	TargetPort int32 // defaults to Port
	Protocol   corev1.Protocol
	NodePort   int32 // with Type NodePort; 0 lets the API server pick
}

// ServiceSpec describes a Service for CreateService.
type ServiceSpec struct {
	Namespace, Name string
	Type            corev1.ServiceType // default ClusterIP
	ClusterIPs      []string           // empty: allocated
	DualStack       bool               // RequireDualStack when ClusterIPs is empty
	ExternalIPs     []string
	Ports           []ServicePort
	Selector        map[string]string
}

// CreateService creates a Service (and its namespace if missing).
func (cp *ControlPlane) CreateService(t testing.TB, s ServiceSpec) *corev1.Service {
	t.Helper()
	ctx, cancel := cp.ctx()
	defer cancel()
	cp.EnsureNamespace(t, s.Namespace)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace},
		Spec: corev1.ServiceSpec{
			Type:        s.Type,
			ClusterIPs:  s.ClusterIPs,
			ExternalIPs: s.ExternalIPs,
			Selector:    s.Selector,
		},
	}
	if len(s.ClusterIPs) > 0 {
		svc.Spec.ClusterIP = s.ClusterIPs[0]
	}
	if s.DualStack {
		pol := corev1.IPFamilyPolicyRequireDualStack
		svc.Spec.IPFamilyPolicy = &pol
	}
	for _, p := range s.Ports {
		tp := p.TargetPort
		if tp == 0 {
			tp = p.Port
		}
		proto := p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.Name, Port: p.Port, Protocol: proto, TargetPort: intstr.FromInt32(tp), NodePort: p.NodePort})
	}
	out, err := cp.Client.CoreV1().Services(s.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s/%s: %v", s.Namespace, s.Name, err)
	}
	return out
}

// Endpoint is one address of an EndpointSlice for CreateEndpointSlice.
type Endpoint struct {
	IP       string
	Node     string
	Pod      string // pod name in the slice's namespace; "" for no targetRef
	PodUID   types.UID
	NotReady bool
}

// CreateEndpointSlice creates an EndpointSlice for a Service of that name
// (no endpointslice controller runs), with ports named like the Service's.
// addressType is discoveryv1.AddressTypeIPv4 or IPv6.
func (cp *ControlPlane) CreateEndpointSlice(t testing.TB, namespace, name, service string, addressType discoveryv1.AddressType, ports []ServicePort, endpoints []Endpoint) *discoveryv1.EndpointSlice {
	t.Helper()
	ctx, cancel := cp.ctx()
	defer cancel()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: service,
				discoveryv1.LabelManagedBy:   "netinspect-test",
			},
		},
		AddressType: addressType,
	}
	for _, p := range ports {
		name, port, proto := p.Name, p.TargetPort, p.Protocol
		if port == 0 {
			port = p.Port
		}
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
	}
	for _, e := range endpoints {
		ready := !e.NotReady
		ep := discoveryv1.Endpoint{Addresses: []string{e.IP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
		if e.Node != "" {
			node := e.Node
			ep.NodeName = &node
		}
		if e.Pod != "" {
			ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: e.Pod, UID: e.PodUID}
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
	out, err := cp.Client.DiscoveryV1().EndpointSlices(namespace).Create(ctx, es, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create EndpointSlice %s/%s: %v", namespace, name, err)
	}
	return out
}

// Eventually polls cond every 50 ms until it returns nil or timeout passes,
// then fails the test with the last error.
func Eventually(t interface {
	Helper()
	Fatalf(string, ...any)
}, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CreateServices creates the ClusterIP Services svc-<from> to svc-<to-1> in
// namespace (which must exist), each with the port "http" 80/TCP and one
// EndpointSlice of eps ready endpoints on no node (10.244.0.0/16 and up,
// distinct over the whole range, target port 8080), through 8 clients in
// parallel: a fixture of thousands of objects is made in about a minute,
// where kubectl takes several.
func (cp *ControlPlane) CreateServices(t testing.TB, namespace string, from, to, eps int) {
	t.Helper()
	start := time.Now()
	jobs := make(chan int)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := range jobs {
				name := fmt.Sprintf("svc-%d", i)
				_, err := cp.Client.CoreV1().Services(namespace).Create(ctx, &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}},
				}, metav1.CreateOptions{})
				if err != nil {
					errs <- fmt.Errorf("create service %s: %w", name, err)
					return
				}
				pname, port, proto, ready := "http", int32(8080), corev1.ProtocolTCP, true
				es := &discoveryv1.EndpointSlice{
					ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
					AddressType: discoveryv1.AddressTypeIPv4,
					Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}},
				}
				for e := range eps {
					k := i*eps + e
					es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
						Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 244+k/(250*256), (k/250)%256, k%250+1)},
						Conditions: discoveryv1.EndpointConditions{Ready: &ready},
					})
				}
				if _, err := cp.Client.DiscoveryV1().EndpointSlices(namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("create EndpointSlice %s: %w", es.Name, err)
					return
				}
			}
		}()
	}
	var failed error
	for i := from; i < to && failed == nil; i++ {
		select {
		case jobs <- i:
		case failed = <-errs:
		}
	}
	close(jobs)
	wg.Wait()
	if failed == nil {
		select {
		case failed = <-errs:
		default:
		}
	}
	if failed != nil {
		t.Fatal(failed)
	}
	t.Logf("created %d Services and EndpointSlices (%d endpoints each) in %v", to-from, eps, time.Since(start).Round(time.Second))
}
