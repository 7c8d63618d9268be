package collector

import "go.uber.org/zap"

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
}
