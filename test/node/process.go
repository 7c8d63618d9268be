package node

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/controlplane"
)

// proc is a daemon of the node (containerd, kubelet, kube-proxy) started in
// the node's namespaces by nsenter. nsenter forks to enter the PID
// namespace and does not forward signals, so the daemon is signalled by its
// own PID, the child of nsenter.
type proc struct {
	name string
	cmd  *exec.Cmd // nsenter
	pid  int       // the daemon, as seen from the test process
	log  string
	done chan struct{}
}

// start runs argv inside the node's mount, network and PID namespaces with
// its output in Dir/<name>.log. The node's teardown kills it with every
// other process of the node; stop ends it earlier.
func (n *Node) start(t testing.TB, name string, argv ...string) *proc {
	t.Helper()
	logPath := filepath.Join(n.Dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command("nsenter", append(n.nsenterArgs(), argv...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	p.pid, err = childOf(cmd.Process.Pid, p.done)
	if err != nil {
		t.Fatalf("start %s: %v\n%s", name, err, p.tail())
	}
	return p
}

// nsenterArgs are nsenter's options that enter the node's namespaces (the
// node's root and working directory are the host's).
func (n *Node) nsenterArgs() []string {
	return []string{"--target", strconv.Itoa(n.initPID), "--mount", "--net", "--pid", "--"}
}

// childOf returns the PID of the first child of pid, waiting up to 10 s for
// the fork (done closes if pid exits first).
func childOf(pid int, done <-chan struct{}) (int, error) {
	path := fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				return strconv.Atoi(f[0])
			}
		}
		select {
		case <-done:
			return 0, fmt.Errorf("process %d exited before it forked", pid)
		default:
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("process %d did not fork within 10 s", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the daemon and SIGKILL if it has not exited within
// 10 s; nsenter exits with it.
func (p *proc) stop() {
	if !p.running() {
		return
	}
	_ = syscall.Kill(p.pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
		<-p.done
	}
}

// tail returns the last 40 lines of the daemon's log.
func (p *proc) tail() string { return controlplane.Tail(p.log, 40) }
