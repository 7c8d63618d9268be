package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netinspect/netinspect/test/controlplane"
)

// kubeletConfig is the kubelet's configuration for this machine kind; see
// the package documentation for why each unusual setting is there.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 (hybrid) without systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {{cgroupRoot}}
# No CAP_SYS_RESOURCE: the default -999 cannot be set.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://{{socket}}
address: {{ip}}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# The API server (logs, exec) presents a client certificate of the cluster
# CA; everyone else is checked with TokenReview and SubjectAccessReview.
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {{ca}}
authorization:
  mode: Webhook
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
# Quick status and probes for tests; no eviction or image garbage collection
# on a machine whose disk and memory other tests share.
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1Mi
  nodefs.inodesFree: "1"
  imagefs.available: 1Mi
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
serializeImagePulls: false
shutdownGracePeriod: 0s
`

// startKubelet writes the kubelet's credentials and configuration and starts
// it in the node's namespaces; Start waits for the Node to become Ready.
func (n *Node) startKubelet(t testing.TB) {
	t.Helper()
	kubeconfig := n.CP.ClientKubeconfig(t, "kubelet", "system:node:"+n.Name, "system:nodes")
	cfg := strings.NewReplacer("{{cgroupRoot}}", n.cgroupRoot, "{{socket}}", n.ContainerdSocket(),
		"{{ip}}", IP, "{{ca}}", n.CP.CAFile()).Replace(kubeletConfig)
	path := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n.kubelet = n.start(t, "kubelet", controlplane.Binary(t, "kubelet"),
		"--config="+path,
		"--kubeconfig="+kubeconfig,
		"--hostname-override="+n.Name,
		"--node-ip="+IP,
		"--root-dir=/var/lib/kubelet",
		"-v=2",
	)
	n.procs = append(n.procs, n.kubelet)
}
