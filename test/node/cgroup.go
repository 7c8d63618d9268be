package node

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cgroupMount is where this machine kind mounts its cgroup hierarchies
// (v1, one per controller, plus the hybrid unified one).
const cgroupMount = "/sys/fs/cgroup"

// makeCgroupRoot creates the node's cgroup (/ni-node-<id>) in every
// hierarchy: the kubelet's cgroupRoot must exist, and with its own root the
// node's pods never mix with another test's or the host's.
func (n *Node) makeCgroupRoot(t testing.TB) {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	n.cgroupRoot = "/ni-node-" + hex.EncodeToString(b)
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hierarchies {
		dir := filepath.Join(h, n.cgroupRoot)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatalf("create the node's cgroup: %v", err)
		}
		// A v1 cpuset cgroup starts with no CPUs and no memory nodes; a
		// process cannot join it until they are set.
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(h, f))
				if err == nil {
					err = os.WriteFile(filepath.Join(dir, f), v, 0o644)
				}
				if err != nil {
					t.Fatalf("set %s of the node's cgroup: %v", f, err)
				}
			}
		}
	}
}

// cgroupHierarchies lists the mounted cgroup hierarchies under cgroupMount.
func cgroupHierarchies() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, line := range strings.Split(string(b), "\n") {
		// ... mountpoint ... - fstype source options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 1 || (g[0] != "cgroup" && g[0] != "cgroup2") {
			continue
		}
		if strings.HasPrefix(f[4], cgroupMount+"/") {
			dirs = append(dirs, f[4])
		}
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("no cgroup hierarchy mounted under %s", cgroupMount)
	}
	return dirs, nil
}

// removeCgroups removes the cgroup root and everything below it in every
// hierarchy, children first, killing (by PID) any process still in one; it
// retries for 10 s while the killed processes exit.
func removeCgroups(root string) error {
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		for _, h := range hierarchies {
			var dirs []string
			_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			slices.Reverse(dirs) // children first
			for _, d := range dirs {
				for _, pid := range pidsOf(filepath.Join(d, "cgroup.procs")) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				if err := syscall.Rmdir(d); err != nil && !os.IsNotExist(err) {
					left = append(left, fmt.Sprintf("%s: %v", d, err))
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups left after 10 s: %s", strings.Join(left, "; "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
