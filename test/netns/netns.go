// Package netns creates throw-away network namespaces for integration tests.
//
// Each namespace is a named one under /run/netns (made with `ip netns add`),
// so commands can run in it with `ip netns exec` and Go code can reach it
// through a file descriptor, without moving a shared OS thread. It is removed
// when the test ends, pass or fail.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	sourcens "github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// NS is a network namespace owned by one test.
type NS struct {
	Name string
	t    testing.TB
	file *os.File
}

// New creates a namespace named "ni-<prefix>-<random>" with loopback up and
// registers its removal with t.Cleanup.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random netns name: %v", err)
	}
	name := fmt.Sprintf("ni-%s-%s", prefix, hex.EncodeToString(b))
	if len(name) > 40 {
		name = name[:40]
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name, t: t}
	t.Cleanup(ns.remove)
	ns.MustRun("ip", "link", "set", "lo", "up")
	f, err := os.Open(ns.Path())
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	ns.file = f
	return ns
}

// Path is the namespace's bind mount, usable with setns or nsenter --net.
func (ns *NS) Path() string { return filepath.Join("/run/netns", ns.Name) }

// FD is an open file descriptor of the namespace, valid until the test ends;
// pass it as netlink.Config.NetNS.
func (ns *NS) FD() int { return int(ns.file.Fd()) }

// Target names the namespace to the readers under source/.
func (ns *NS) Target() sourcens.Target { return sourcens.FromFD(ns.FD()) }

// Do runs fn on an OS thread inside the namespace, so the sockets fn
// creates belong to it.
func (ns *NS) Do(fn func() error) error { return ns.Target().Do(fn) }

// Command returns a command that runs argv inside the namespace.
func (ns *NS) Command(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
}

// Run runs argv inside the namespace, with a one-minute bound, and returns
// its combined output.
func (ns *NS) Run(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := ns.Command(ctx, argv...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("in netns %s: %s: %w: %s", ns.Name, strings.Join(argv, " "), err, out.String())
	}
	return out.String(), nil
}

// MustRun is Run that fails the test on error.
func (ns *NS) MustRun(argv ...string) string {
	ns.t.Helper()
	out, err := ns.Run(argv...)
	if err != nil {
		ns.t.Fatal(err)
	}
	return out
}

// Sysctl reads a sysctl (dotted name) as seen inside the namespace.
func (ns *NS) Sysctl(name string) string {
	ns.t.Helper()
	return strings.TrimSpace(ns.MustRun("cat", "/proc/sys/"+strings.ReplaceAll(name, ".", "/")))
}

// SetSysctl writes a sysctl inside the namespace.
func (ns *NS) SetSysctl(name, value string) {
	ns.t.Helper()
	ns.MustRun("sysctl", "-q", "-w", name+"="+value)
}

func (ns *NS) remove() {
	if ns.file != nil {
		ns.file.Close()
	}
	if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
		ns.t.Errorf("ip netns del %s: %v: %s", ns.Name, err, out)
	}
}

// Start runs argv in the namespace with its output in dir/<name>.log and
// stops it (SIGTERM, then SIGKILL after 10 s) when the test ends, printing
// the log's tail if the test failed. done is closed when the process exits.
func (ns *NS) Start(t testing.TB, dir, name string, argv ...string) (cmd *exec.Cmd, done <-chan struct{}) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	// `ip netns exec` execs argv after entering ns, so the PID is argv's.
	cmd = ns.Command(context.Background(), argv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("--- %s log (tail) ---\n%s", name, b)
		}
	})
	return cmd, exited
}
