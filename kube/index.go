// Package kube joins kernel state to Kubernetes metadata.
//
// Informers watch the pods of this node (field selector spec.nodeName),
// Services and EndpointSlices cluster-wide, and this node's Node object
// (field selector metadata.name), strip every object to what the Index
// needs before it is cached, and keep an Index (package kube/index) that
// collectors query on the scrape path.
package kube

import "github.com/netinspect/netinspect/kube/index"

// The index's types, under the names the rest of netinspect uses.
type (
	// Index: see index.Index.
	Index = index.Index
	// Lookup: see index.Lookup.
	Lookup = index.Lookup
	// PodRef: see index.PodRef.
	PodRef = index.PodRef
	// ServicePortRef: see index.ServicePortRef.
	ServicePortRef = index.ServicePortRef
	// PodInfo: see index.PodInfo.
	PodInfo = index.PodInfo
	// ServiceInfo: see index.ServiceInfo.
	ServiceInfo = index.ServiceInfo
	// ServicePortInfo: see index.ServicePortInfo.
	ServicePortInfo = index.ServicePortInfo
	// EndpointInfo: see index.EndpointInfo.
	EndpointInfo = index.EndpointInfo
	// EndpointHints: see index.EndpointHints.
	EndpointHints = index.EndpointHints
	// EndpointPort: see index.EndpointPort.
	EndpointPort = index.EndpointPort
)

// NewIndex returns an empty index for node: see index.NewIndex.
func NewIndex(node string) *Index { return index.NewIndex(node) }
