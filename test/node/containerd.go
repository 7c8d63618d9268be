package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// containerdConfig is containerd 1.6's configuration (version 2) for the
// node: root, state and sockets under the test's directory, the CRI plugin
// with the harness's pause image, runc with cgroupfs, and CNI from Debian's
// plugin directory with the node's own configuration directory.
const containerdConfig = `version = 2
root = "{{dir}}/root"
state = "{{dir}}/state"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{{dir}}/containerd.sock"
[ttrpc]
  address = "{{dir}}/containerd.sock.ttrpc"
[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{dir}}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{pause}}"
  # No CAP_SYS_RESOURCE here: the kubelet asks for -998 for sandboxes and
  # -997 for Guaranteed pods, which only a process allowed to lower its own
  # score may set; clamp them to containerd's own.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{{runc}}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{cnibin}}"
    conf_dir = "{{cniconf}}"
    max_conf_num = 1
`

func (n *Node) containerdDir() string { return filepath.Join(n.Dir, "containerd") }

// ContainerdSocket is the CRI endpoint of the node's containerd.
func (n *Node) ContainerdSocket() string { return filepath.Join(n.containerdDir(), "containerd.sock") }

func (n *Node) cniConfDir() string { return filepath.Join(n.Dir, "cni") }

// startContainerd writes the configuration, starts containerd in the node's
// namespaces and waits until it answers on its socket.
func (n *Node) startContainerd(t testing.TB) {
	t.Helper()
	dir := n.containerdDir()
	for _, d := range []string{dir, n.cniConfDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("{{dir}}", dir, "{{pause}}", PauseImage, "{{runc}}", runc,
		"{{cnibin}}", cniBinDir, "{{cniconf}}", n.cniConfDir()).Replace(containerdConfig)
	path := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	n.containerd = n.start(t, "containerd", "containerd", "--config", path)
	n.procs = append(n.procs, n.containerd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := n.ctr("version")
		if err == nil {
			return
		}
		if !n.containerd.running() || time.Now().After(deadline) {
			t.Fatalf("containerd not answering: %v\n%s", err, n.containerd.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ctr runs containerd's ctr against the node's containerd, in the
// Kubernetes namespace of its images and containers.
func (n *Node) ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", n.ContainerdSocket(), "--namespace", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// ImportImage imports an image archive (docker-archive, or OCI archive whose
// index names the image) into the node's containerd, as a node that pulled it
// would hold it; pods use it with imagePullPolicy IfNotPresent (the default
// for a tag other than latest).
func (n *Node) ImportImage(t testing.TB, archive string) {
	t.Helper()
	start := time.Now()
	// --platform: of a multi-architecture OCI archive, the node's own.
	if out, err := n.ctr("images", "import", "--platform", "linux/"+runtime.GOARCH, archive); err != nil {
		t.Fatalf("import %s: %v", archive, err)
	} else {
		t.Logf("imported %s in %v: %s", filepath.Base(archive), time.Since(start).Round(10*time.Millisecond), strings.TrimSpace(out))
	}
}

// RemoveImage removes the reference ref from the node's containerd (the
// content stays while another reference or a container uses it), as if the
// node had lost the image: a pod that needs it now fails to pull it.
func (n *Node) RemoveImage(t testing.TB, ref string) {
	t.Helper()
	if _, err := n.ctr("images", "rm", ref); err != nil {
		t.Fatal(err)
	}
}

// TagImage gives an imported image a second reference, as pushing the same
// image under a new tag would.
func (n *Node) TagImage(t testing.TB, source, target string) {
	t.Helper()
	if _, err := n.ctr("images", "tag", "--force", source, target); err != nil {
		t.Fatal(err)
	}
}
