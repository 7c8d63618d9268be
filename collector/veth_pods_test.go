package collector

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netinspect/netinspect/kube"
	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/vm"
)

// podStore is where the tests' Pod objects live; the collector reads them
// through a kube.Index either way.
type podStore interface {
	Index() *kube.Index
	Set(t testing.TB, p kube.PodInfo)
	Delete(t testing.TB, namespace, name string)
}

// indexPods fills the index directly through its exported setters.
type indexPods struct{ ix *kube.Index }

// vethPods is where the veth tests keep their Pod objects: a real
// kube-apiserver, except inside the qemu VM of test/vm (a second kernel,
// no control plane there), where the index is filled directly.
func vethPods(t testing.TB) podStore {
	if vm.InGuest() {
		return newIndexPods()
	}
	return newAPIPods(t)
}

func newIndexPods() *indexPods { return &indexPods{ix: kube.NewIndex(testNode)} }

func (s *indexPods) Index() *kube.Index                       { return s.ix }
func (s *indexPods) Set(_ testing.TB, p kube.PodInfo)         { s.ix.SetPod(p) }
func (s *indexPods) Delete(_ testing.TB, namespace, n string) { s.ix.DeletePod(namespace, n) }

// apiPods keeps Pod objects in a real kube-apiserver (test/controlplane);
// the index is the one kube.Watcher keeps from its informers, as in the
// binary. Set and Delete return once the index shows the change.
type apiPods struct {
	client kubernetes.Interface
	w      *kube.Watcher
}

func newAPIPods(t testing.TB) *apiPods {
	t.Helper()
	cp := controlplane.Start(t)
	w, err := kube.NewWatcher(kube.Config{REST: cp.Config, NodeName: testNode})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.Start(ctx)
	syncCtx, syncCancel := context.WithTimeout(ctx, time.Minute)
	defer syncCancel()
	if !w.WaitForSync(syncCtx) {
		t.Fatal("kube caches did not sync within a minute")
	}
	return &apiPods{client: cp.Client, w: w}
}

func (s *apiPods) Index() *kube.Index { return s.w.Index() }

func (s *apiPods) Set(t testing.TB, p kube.PodInfo) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name},
		Spec: corev1.PodSpec{
			NodeName:    p.Node,
			HostNetwork: p.HostNetwork,
			Containers:  []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
		},
	}
	created, err := s.client.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	created.Status.Phase = corev1.PodRunning
	for _, ip := range p.IPs {
		created.Status.PodIPs = append(created.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if len(p.IPs) > 0 {
		created.Status.PodIP = p.IPs[0].String()
	}
	if _, err := s.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("set status.podIPs of pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	s.waitFor(t, p.Namespace, p.Name, func(got *kube.PodInfo) bool { return got != nil && len(got.IPs) == len(p.IPs) })
}

func (s *apiPods) Delete(t testing.TB, namespace, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// No kubelet confirms a graceful deletion: delete at once.
	err := s.client.CoreV1().Pods(namespace).Delete(ctx, name, *metav1.NewDeleteOptions(0))
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete pod %s/%s: %v", namespace, name, err)
	}
	s.waitFor(t, namespace, name, func(got *kube.PodInfo) bool { return got == nil })
}

// waitFor polls the index until the pod satisfies ok.
func (s *apiPods) waitFor(t testing.TB, namespace, name string, ok func(*kube.PodInfo) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got *kube.PodInfo
		for _, p := range s.w.Index().Pods() {
			if p.Namespace == namespace && p.Name == name {
				got = &p
				break
			}
		}
		if ok(got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s/%s: the index did not follow the API server within 30 s (has %+v)", namespace, name, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
