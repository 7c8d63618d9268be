package ipvs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/netns"
)

// TestIPVSAbsentNetlink runs where the kernel has no IPVS (the host kernel
// has none built in): generic netlink has no IPVS family, which is
// ErrNoData, without any module being loaded.
func TestIPVSAbsentNetlink(t *testing.T) {
	if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
		t.Skip("this kernel has IPVS")
	}
	modulesBefore, _ := os.ReadFile("/proc/modules")
	_, err := Dial(context.Background(), netns.Target{})
	if !errors.Is(err, source.ErrAbsent) {
		t.Fatalf("Dial = %v, want an error matching source.ErrAbsent", err)
	}
	modulesAfter, _ := os.ReadFile("/proc/modules")
	if !bytes.Equal(modulesBefore, modulesAfter) {
		t.Errorf("kernel modules changed during the IPVS lookup")
	}
	if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
		t.Errorf("IPVS appeared after the lookup: a module was loaded")
	}
}
