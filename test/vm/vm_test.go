package vm

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// TestGuestKernel runs inside the VM: the kernel is Debian's and the
// default modules are loaded.
func TestGuestKernel(t *testing.T) {
	RequireGuest(t)
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest kernel %s", strings.TrimSpace(string(b)))
	mods, err := os.ReadFile("/proc/modules")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"ip_vs ", "ip_vs_rr ", "ip_vs_wrr ", "nf_conntrack ", "veth "} {
		if !strings.Contains(string(mods), m) {
			t.Errorf("module %q not loaded in the guest:\n%s", m, mods)
		}
	}
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Errorf("IPVS absent in the guest: %v", err)
	}
}

// TestGuestFails runs inside the VM only when asked to, to prove the host
// sees a failing guest.
func TestGuestFails(t *testing.T) {
	RequireGuest(t)
	if os.Getenv("NETINSPECT_VM_WANT_FAIL") != "1" {
		t.Skip("only run by TestVMReportsFailure")
	}
	t.Fatal("deliberate failure")
}

// TestVMBoot boots the VM and checks the guest test really ran.
func TestVMBoot(t *testing.T) {
	res := Run(t, Config{Package: ".", Run: "^TestGuestKernel$", Commands: []string{"ip"}})
	res.RequirePassed(t, "TestGuestKernel")
	t.Logf("VM run took %s", res.Boot)
}

// recordingTB records a failure instead of failing the real test, so the
// harness's own failure paths can be checked.
type recordingTB struct {
	testing.TB
	mu     sync.Mutex
	failed []string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed = append(r.failed, fmt.Sprintf(format, args...))
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	r.failed = append(r.failed, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// TestVMReportsGuestFailure checks that a failing guest test fails the host
// test, and that RequirePassed catches a guest test that only skipped.
func TestVMReportsGuestFailure(t *testing.T) {
	rec := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(rec, Config{
			Package: ".", Run: "^TestGuest(Fails|Kernel)$",
			Env: map[string]string{"NETINSPECT_VM_WANT_FAIL": "1"},
		})
	}()
	<-done
	if len(rec.failed) == 0 || !strings.Contains(strings.Join(rec.failed, "\n"), "guest tests failed with exit status 1") {
		t.Fatalf("a failing guest test did not fail the host test: %q", rec.failed)
	}

	res := &Result{Output: "=== RUN   TestGuestFails\n--- SKIP: TestGuestFails (0.00s)\n--- PASS: TestGuestKernel (0.04s)\n"}
	rec = &recordingTB{TB: t}
	res.RequirePassed(rec, "TestGuestKernel", "TestGuestFails")
	if len(rec.failed) != 1 || !strings.Contains(rec.failed[0], "TestGuestFails") {
		t.Errorf("RequirePassed on a skipped guest test recorded %q", rec.failed)
	}
}
