package collector

import (
	"fmt"
	"slices"
	"strings"

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

// logger is the logger collectors use: a no-op one when none is given.
func (d Deps) logger() *zap.Logger {
	if d.Logger == nil {
		return zap.NewNop()
	}
	return d.Logger
}

// oneOf returns an error unless value is one of allowed.
func oneOf(what, value string, allowed []string) error {
	if slices.Contains(allowed, value) {
		return nil
	}
	return fmt.Errorf("unknown %s %q (known: %s)", what, value, strings.Join(allowed, ", "))
}
