// Package testenv decides what an integration test does when its
// prerequisites are missing: skip on a developer's machine, fail under CI.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where a skipped
// integration test counts as a failure.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require stops the test when ok is false: it fails under CI and skips
// elsewhere, saying why.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("integration prerequisite missing under CI=true: %s", why)
	}
	t.Skipf("integration prerequisite missing: %s (run `make test` to install it)", why)
}

// RequireRoot requires uid 0, which network namespaces and netlink writes need.
func RequireRoot(t testing.TB) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "must run as root (network namespaces, netlink)")
}

// RequireCommand requires an executable on PATH and returns its path.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, err == nil, name+" not found on PATH")
	return p
}
