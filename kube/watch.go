package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	netutils "k8s.io/utils/net"
)

// Resource names, as used in the kube_cache_synced and kube_objects labels.
const (
	ResourcePods           = "pods"
	ResourceServices       = "services"
	ResourceEndpointSlices = "endpointslices"
	// ResourceNodes is this node's own Node object (field selector
	// metadata.name), for its topology zone.
	ResourceNodes = "nodes"
)

// Resources lists the watched resources in label order.
var resources = []string{ResourcePods, ResourceServices, ResourceEndpointSlices, ResourceNodes}

// Labels and annotation values kube-proxy acts on (k8s.io/api core/v1
// well_known_labels.go; pkg/proxy/apis for the proxy name).
const (
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	labelHeadless         = corev1.IsHeadlessService
	labelTopologyZone     = corev1.LabelTopologyZone
)

// Config configures the watcher.
type Config struct {
	// REST is the API server connection. Its content type is switched to
	// protobuf; the caller's value is not modified.
	REST *rest.Config
	// NodeName is the node whose pods are watched (required).
	NodeName string
	// PodLabels selects the pod labels kept for pod_labels.
	PodLabels LabelAllowlist
	// Logger receives the warnings (forbidden, sync); nil logs nothing.
	Logger *zap.Logger
}

// Watcher runs the informers that keep an Index current.
type Watcher struct {
	cfg    Config
	index  *Index
	logger *zap.Logger

	informers map[string]cache.SharedIndexInformer

	forbiddenMu sync.Mutex
	forbidden   map[string]string // resource -> message, logged once

	started atomic.Bool
}

// NewWatcher builds the informers; Start runs them.
func NewWatcher(cfg Config) (*Watcher, error) {
	if cfg.REST == nil {
		return nil, errors.New("kube: no REST config")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("kube: no node name: set --node-name or the NODE_NAME environment variable (the downward API's spec.nodeName)")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	rc := rest.CopyConfig(cfg.REST)
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	if rc.UserAgent == "" {
		rc.UserAgent = "netinspect"
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: client for %s: %w", rc.Host, err)
	}
	w := &Watcher{
		cfg:       cfg,
		index:     NewIndex(cfg.NodeName),
		logger:    logger,
		informers: map[string]cache.SharedIndexInformer{},
		forbidden: map[string]string{},
	}

	// Pods of this node only: the field selector is evaluated by the API
	// server, so other nodes' pods never reach this process.
	podFactory := informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "spec.nodeName=" + cfg.NodeName
		}))
	clusterFactory := informers.NewSharedInformerFactoryWithOptions(cs, 0)
	// This node's Node object only, for its zone label (topology hints).
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "metadata.name=" + cfg.NodeName
		}))

	w.informers[ResourcePods] = podFactory.Core().V1().Pods().Informer()
	w.informers[ResourceServices] = clusterFactory.Core().V1().Services().Informer()
	w.informers[ResourceEndpointSlices] = clusterFactory.Discovery().V1().EndpointSlices().Informer()
	w.informers[ResourceNodes] = nodeFactory.Core().V1().Nodes().Informer()
	// What kube-proxy reads: until it is all in, the index cannot say
	// what kube-proxy should have programmed (the node's pods do not
	// matter to that).
	w.index.SetSynced(func() bool {
		return w.Synced(ResourceServices) && w.Synced(ResourceEndpointSlices) && w.Synced(ResourceNodes)
	})

	transforms := map[string]cache.TransformFunc{
		ResourcePods:           w.slimPod,
		ResourceServices:       slimService,
		ResourceEndpointSlices: slimEndpointSlice,
		ResourceNodes:          slimNode,
	}
	for _, res := range resources {
		inf := w.informers[res]
		if err := inf.SetTransform(transforms[res]); err != nil {
			return nil, fmt.Errorf("kube: transform for %s: %w", res, err)
		}
		if err := inf.SetWatchErrorHandlerWithContext(w.watchErrorHandler(res)); err != nil {
			return nil, fmt.Errorf("kube: watch error handler for %s: %w", res, err)
		}
	}
	if _, err := w.informers[ResourcePods].AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.onPod(o) },
		UpdateFunc: func(_, o any) { w.onPod(o) },
		DeleteFunc: func(o any) { w.onPodDelete(o) },
	}); err != nil {
		return nil, err
	}
	if _, err := w.informers[ResourceServices].AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.onService(o) },
		UpdateFunc: func(_, o any) { w.onService(o) },
		DeleteFunc: func(o any) { w.onServiceDelete(o) },
	}); err != nil {
		return nil, err
	}
	if _, err := w.informers[ResourceEndpointSlices].AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.onSlice(o) },
		UpdateFunc: func(_, o any) { w.onSlice(o) },
		DeleteFunc: func(o any) { w.onSliceDelete(o) },
	}); err != nil {
		return nil, err
	}
	// A deleted Node keeps its last zone, as kube-proxy's
	// NodeTopologyConfig does (pkg/proxy/config: DeleteFunc is a no-op;
	// kube-proxy exits when its Node goes).
	if _, err := w.informers[ResourceNodes].AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.onNode(o) },
		UpdateFunc: func(_, o any) { w.onNode(o) },
	}); err != nil {
		return nil, err
	}
	return w, nil
}

// Start runs the informers until ctx is done. It returns at once; the index
// fills in as the caches sync.
func (w *Watcher) Start(ctx context.Context) {
	if !w.started.CompareAndSwap(false, true) {
		return
	}
	for _, res := range resources {
		go w.informers[res].RunWithContext(ctx)
	}
}

// Index is the index the watcher keeps current.
func (w *Watcher) Index() *Index { return w.index }

// Synced reports whether resource's cache has synced.
func (w *Watcher) Synced(resource string) bool {
	inf := w.informers[resource]
	return inf != nil && inf.HasSynced()
}

// WaitForSync waits until every cache has synced or ctx is done.
func (w *Watcher) WaitForSync(ctx context.Context) bool {
	fns := make([]cache.InformerSynced, 0, len(resources))
	for _, res := range resources {
		fns = append(fns, w.informers[res].HasSynced)
	}
	return cache.WaitForCacheSync(ctx.Done(), fns...)
}

// Ready reports whether every cache has synced, and says which have not and
// which are forbidden.
func (w *Watcher) Ready() (bool, string) {
	var waiting []string
	for _, res := range resources {
		if !w.Synced(res) {
			waiting = append(waiting, res)
		}
	}
	if len(waiting) == 0 {
		return true, "kubernetes cache synced"
	}
	detail := "kubernetes cache not synced: " + strings.Join(waiting, ", ")
	if f := w.Forbidden(); len(f) > 0 {
		detail += " (forbidden: " + strings.Join(f, ", ") + ")"
	}
	return false, detail
}

// Forbidden lists the resources the API server refused to this identity
// and that have not synced since.
func (w *Watcher) Forbidden() []string {
	w.forbiddenMu.Lock()
	defer w.forbiddenMu.Unlock()
	out := make([]string, 0, len(w.forbidden))
	for res := range w.forbidden {
		if !w.Synced(res) {
			out = append(out, res)
		}
	}
	sort.Strings(out)
	return out
}

var forbiddenVerb = regexp.MustCompile(`cannot (\w+) resource`)

// watchErrorHandler logs an RBAC refusal once per resource, with the verb
// the API server names, and otherwise defers to client-go's handler (which
// logs through klog and lets the reflector back off and retry, so an API
// server that comes back is resynced without a restart).
func (w *Watcher) watchErrorHandler(res string) cache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, r *cache.Reflector, err error) {
		if apierrors.IsForbidden(err) {
			verb := "list"
			if m := forbiddenVerb.FindStringSubmatch(err.Error()); m != nil {
				verb = m[1]
			}
			w.forbiddenMu.Lock()
			_, seen := w.forbidden[res]
			w.forbidden[res] = verb
			w.forbiddenMu.Unlock()
			if !seen {
				w.logger.Error("kubernetes API forbids reading a resource; enrichment from it is off until RBAC allows it",
					zap.String("resource", res), zap.String("missing_verb", verb),
					zap.String("fix", "grant verbs get, list, watch on "+res+" to the exporter's ServiceAccount (deploy/rbac.yaml)"),
					zap.Error(err))
			}
			return
		}
		w.logger.Debug("kubernetes watch failed, retrying", zap.String("resource", res), zap.Error(err))
	}
}

// slimPod strips a pod to what the index needs before it is cached.
func (w *Watcher) slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a DeletedFinalStateUnknown tombstone
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            p.Name,
			Namespace:       p.Namespace,
			UID:             p.UID,
			ResourceVersion: p.ResourceVersion,
			Labels:          w.cfg.PodLabels.Filter(p.Labels),
		},
		Spec: corev1.PodSpec{
			NodeName:    p.Spec.NodeName,
			HostNetwork: p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{
			Phase:  p.Status.Phase,
			PodIPs: p.Status.PodIPs,
		},
	}
	if len(out.Status.PodIPs) == 0 && p.Status.PodIP != "" {
		out.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	return out, nil
}

func slimService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	out := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:            s.Name,
			Namespace:       s.Namespace,
			UID:             s.UID,
			ResourceVersion: s.ResourceVersion,
		},
		Spec: corev1.ServiceSpec{
			Type:                  s.Spec.Type,
			ClusterIPs:            s.Spec.ClusterIPs,
			IPFamilies:            internFamilies(s.Spec.IPFamilies),
			ExternalIPs:           s.Spec.ExternalIPs,
			Ports:                 make([]corev1.ServicePort, len(s.Spec.Ports)),
			SessionAffinity:       internAffinity(s.Spec.SessionAffinity),
			ExternalTrafficPolicy: internExternalPolicy(s.Spec.ExternalTrafficPolicy),
			InternalTrafficPolicy: internInternalPolicy(s.Spec.InternalTrafficPolicy),
		},
	}
	if v, ok := s.Labels[labelServiceProxyName]; ok {
		out.Labels = map[string]string{labelServiceProxyName: v}
	}
	if len(out.Spec.ClusterIPs) == 0 && s.Spec.ClusterIP != "" {
		out.Spec.ClusterIPs = []string{s.Spec.ClusterIP}
	}
	for i, p := range s.Spec.Ports {
		out.Spec.Ports[i] = corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, NodePort: p.NodePort}
	}
	for _, in := range s.Status.LoadBalancer.Ingress {
		if in.IP != "" {
			out.Status.LoadBalancer.Ingress = append(out.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: in.IP, IPMode: internIPMode(in.IPMode)})
		}
	}
	return out, nil
}

// The intern functions replace decoded enum strings by the package's
// constants, so a cached object does not keep its own copy of "Cluster".
func internFamilies(fs []corev1.IPFamily) []corev1.IPFamily {
	if len(fs) == 0 {
		return nil
	}
	out := make([]corev1.IPFamily, len(fs))
	for i, f := range fs {
		switch f {
		case corev1.IPv4Protocol:
			out[i] = corev1.IPv4Protocol
		case corev1.IPv6Protocol:
			out[i] = corev1.IPv6Protocol
		default:
			out[i] = f
		}
	}
	return out
}

func internAffinity(a corev1.ServiceAffinity) corev1.ServiceAffinity {
	if a == corev1.ServiceAffinityClientIP {
		return corev1.ServiceAffinityClientIP
	}
	return ""
}

func internExternalPolicy(p corev1.ServiceExternalTrafficPolicy) corev1.ServiceExternalTrafficPolicy {
	if p == corev1.ServiceExternalTrafficPolicyLocal {
		return corev1.ServiceExternalTrafficPolicyLocal
	}
	return ""
}

var internalLocal = corev1.ServiceInternalTrafficPolicyLocal

func internInternalPolicy(p *corev1.ServiceInternalTrafficPolicy) *corev1.ServiceInternalTrafficPolicy {
	if p != nil && *p == corev1.ServiceInternalTrafficPolicyLocal {
		return &internalLocal
	}
	return nil
}

var ipModeProxy = corev1.LoadBalancerIPModeProxy

// internIPMode keeps only what kube-proxy distinguishes: Proxy, or VIP
// (nil, which kube-proxy treats as VIP).
func internIPMode(m *corev1.LoadBalancerIPMode) *corev1.LoadBalancerIPMode {
	if m != nil && *m == corev1.LoadBalancerIPModeProxy {
		return &ipModeProxy
	}
	if m != nil && *m != corev1.LoadBalancerIPModeVIP {
		v := *m // an unknown mode: kept as it is (kube-proxy does not program it)
		return &v
	}
	return nil
}

// slimNode keeps of this node's Node object only its name and zone label.
func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	out := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion}}
	if z, ok := n.Labels[labelTopologyZone]; ok {
		out.Labels = map[string]string{labelTopologyZone: z}
	}
	return out, nil
}

func slimEndpointSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	out := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:            es.Name,
			Namespace:       es.Namespace,
			UID:             es.UID,
			ResourceVersion: es.ResourceVersion,
		},
		AddressType: es.AddressType,
		Ports:       es.Ports,
		Endpoints:   make([]discoveryv1.Endpoint, len(es.Endpoints)),
	}
	if svc := es.Labels[discoveryv1.LabelServiceName]; svc != "" {
		out.Labels = map[string]string{discoveryv1.LabelServiceName: svc}
	}
	if v, ok := es.Labels[labelHeadless]; ok {
		if out.Labels == nil {
			out.Labels = map[string]string{}
		}
		out.Labels[labelHeadless] = v
	}
	for i, ep := range es.Endpoints {
		s := discoveryv1.Endpoint{
			Addresses:  ep.Addresses,
			Conditions: ep.Conditions,
			NodeName:   ep.NodeName,
		}
		if ep.Hints != nil && (len(ep.Hints.ForZones) > 0 || len(ep.Hints.ForNodes) > 0) {
			s.Hints = ep.Hints
		}
		if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
			s.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ep.TargetRef.Namespace, Name: ep.TargetRef.Name, UID: ep.TargetRef.UID}
		}
		out.Endpoints[i] = s
	}
	return out, nil
}

func tombstone(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

func (w *Watcher) onPod(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	w.index.SetPod(PodInfoFromPod(p))
}

func (w *Watcher) onPodDelete(obj any) {
	if p, ok := tombstone(obj).(*corev1.Pod); ok {
		w.index.DeletePod(p.Namespace, p.Name)
	}
}

func (w *Watcher) onService(obj any) {
	if s, ok := obj.(*corev1.Service); ok {
		w.index.SetService(ServiceInfoFromService(s))
	}
}

func (w *Watcher) onServiceDelete(obj any) {
	if s, ok := tombstone(obj).(*corev1.Service); ok {
		w.index.DeleteService(s.Namespace, s.Name)
	}
}

func (w *Watcher) onSlice(obj any) {
	if es, ok := obj.(*discoveryv1.EndpointSlice); ok {
		w.index.SetEndpointSlice(es.Namespace, es.Name, es.Labels[discoveryv1.LabelServiceName], EndpointsFromSlice(es))
	}
}

func (w *Watcher) onNode(obj any) {
	if n, ok := obj.(*corev1.Node); ok && n.Name == w.cfg.NodeName {
		w.index.SetNodeZone(n.Labels[labelTopologyZone])
	}
}

func (w *Watcher) onSliceDelete(obj any) {
	if es, ok := tombstone(obj).(*discoveryv1.EndpointSlice); ok {
		w.index.DeleteEndpointSlice(es.Namespace, es.Name)
	}
}

// PodInfoFromPod converts a pod. A pod that has finished (Succeeded or
// Failed) has released its IPs, which a new pod may already use, so its IPs
// are not kept.
func PodInfoFromPod(p *corev1.Pod) PodInfo {
	info := PodInfo{
		Namespace:   p.Namespace,
		Name:        p.Name,
		UID:         string(p.UID),
		Node:        p.Spec.NodeName,
		HostNetwork: p.Spec.HostNetwork,
		Labels:      p.Labels,
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return info
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			info.IPs = append(info.IPs, a.Unmap())
		}
	}
	return info
}

// ServiceInfoFromService converts a Service.
func ServiceInfoFromService(s *corev1.Service) ServiceInfo {
	info := ServiceInfo{
		Namespace:               s.Namespace,
		Name:                    s.Name,
		Type:                    string(s.Spec.Type),
		IPFamilies:              s.Spec.IPFamilies,
		InternalTrafficLocal:    s.Spec.InternalTrafficPolicy != nil && *s.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
		ExternalTrafficLocal:    s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal,
		SessionAffinityClientIP: s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP,
	}
	_, info.ServiceProxyName = s.Labels[labelServiceProxyName]
	cips := s.Spec.ClusterIPs
	if len(cips) == 0 && s.Spec.ClusterIP != "" {
		cips = []string{s.Spec.ClusterIP}
	}
	info.ClusterIPs = parseAddrs(cips)
	info.ExternalIPs = parseAddrs(s.Spec.ExternalIPs)
	allVIP := true
	for _, in := range s.Status.LoadBalancer.Ingress {
		a, ok := parseAddr(in.IP)
		if !ok {
			continue
		}
		info.LoadBalancerIPs = append(info.LoadBalancerIPs, a)
		if in.IPMode != nil && *in.IPMode != corev1.LoadBalancerIPModeVIP {
			allVIP = false
		}
	}
	if allVIP {
		// The usual case shares the list.
		info.LoadBalancerVIPs = info.LoadBalancerIPs
	} else {
		for _, in := range s.Status.LoadBalancer.Ingress {
			if a, ok := parseAddr(in.IP); ok && (in.IPMode == nil || *in.IPMode == corev1.LoadBalancerIPModeVIP) {
				info.LoadBalancerVIPs = append(info.LoadBalancerVIPs, a)
			}
		}
	}
	for _, p := range s.Spec.Ports {
		proto := strings.ToLower(string(p.Protocol))
		if proto == "" {
			proto = "tcp"
		}
		info.Ports = append(info.Ports, ServicePortInfo{Name: p.Name, Port: uint16(p.Port), Protocol: proto, NodePort: uint16(p.NodePort)})
	}
	return info
}

// EndpointsFromSlice converts the endpoints of an EndpointSlice. Unset
// conditions take the API's defaults: ready and serving true, terminating
// false (what kube-proxy's EndpointSliceCache assumes too).
func EndpointsFromSlice(es *discoveryv1.EndpointSlice) []EndpointInfo {
	var ports []EndpointPort
	for _, p := range es.Ports {
		ep := EndpointPort{Protocol: "tcp", NilName: p.Name == nil}
		if p.Name != nil {
			ep.Name = *p.Name
		}
		if p.Port != nil {
			ep.Port = uint16(*p.Port)
		}
		if p.Protocol != nil {
			ep.Protocol = strings.ToLower(string(*p.Protocol))
		}
		ports = append(ports, ep)
	}
	_, headless := es.Labels[labelHeadless]
	sliceNotProxied := headless || es.AddressType == discoveryv1.AddressTypeFQDN
	out := make([]EndpointInfo, 0, len(es.Endpoints))
	for _, e := range es.Endpoints {
		c := e.Conditions
		info := EndpointInfo{
			Ready:       c.Ready == nil || *c.Ready,
			Serving:     c.Serving == nil || *c.Serving,
			Terminating: c.Terminating != nil && *c.Terminating,
			Ports:       ports,
		}
		if e.NodeName != nil {
			info.Node = *e.NodeName
		}
		if h := e.Hints; h != nil && (len(h.ForZones) > 0 || len(h.ForNodes) > 0) {
			info.Hints = &EndpointHints{}
			for _, z := range h.ForZones {
				info.Hints.ForZones = append(info.Hints.ForZones, z.Name)
			}
			for _, n := range h.ForNodes {
				info.Hints.ForNodes = append(info.Hints.ForNodes, n.Name)
			}
		}
		if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
			info.Pod = PodRef{Namespace: e.TargetRef.Namespace, Name: e.TargetRef.Name, UID: string(e.TargetRef.UID)}
			if info.Pod.Namespace == "" {
				info.Pod.Namespace = es.Namespace
			}
		}
		for i, a := range e.Addresses {
			ip, ok := parseAddr(a)
			if !ok {
				continue // FQDN address type
			}
			info.IP = ip
			info.NotProxied = sliceNotProxied || i > 0
			out = append(out, info)
		}
	}
	return out
}

func parseAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, ok := parseAddr(s); ok {
			out = append(out, a)
		}
	}
	return out
}

// parseAddr parses an address as kube-proxy does (k8s.io/utils/net
// ParseIPSloppy): IPv4 octets with leading zeros are read as decimal, which
// the API server accepted from objects written before 1.22. IPv4-mapped
// IPv6 addresses become IPv4.
func parseAddr(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	ip := netutils.ParseIPSloppy(s)
	if ip == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}
