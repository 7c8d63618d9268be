package collector

import (
	"go.uber.org/zap"

	"github.com/netinspect/netinspect/kube"
)

// Paths are the host paths collectors read from.
type Paths struct {
	// ProcFS is the procfs mountpoint (/proc, or /host/proc in the DaemonSet).
	ProcFS string
	// NetNS is the directory of the container runtime's netns bind mounts.
	NetNS string
}

// Deps are what every collector's constructor gets besides its own config.
type Deps struct {
	Logger *zap.Logger
	Paths  Paths
	// Index resolves IPs to pods and services. It is nil when Kubernetes
	// enrichment is off; a nil Index finds nothing, so label values stay empty.
	Index *kube.Index
}
