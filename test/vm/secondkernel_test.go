package vm

import (
	"testing"
	"time"
)

// TestVMConntrackSecondKernel runs the conntrack collector's integration
// tests on Debian's 6.1 kernel, next to the host's: same tests, another
// kernel (ctnetlink statistics attributes, per-CPU layout).
func TestVMConntrackSecondKernel(t *testing.T) {
	tests := []string{
		"TestConntrackCountsEntriesOfItsNamespace",
		"TestConntrackPerCPUStatisticsSumToTotals",
		"TestConntrackTableFull",
	}
	run := "^("
	for i, n := range tests {
		if i > 0 {
			run += "|"
		}
		run += n
	}
	run += ")$"
	res := Run(t, Config{
		Package:  "../../collector",
		Run:      run,
		Modules:  append(append([]string(nil), DefaultModules...), "nf_tables", "nft_ct"),
		Commands: []string{"ip", "conntrack", "nft", "bash"},
		Timeout:  10 * time.Minute,
	})
	res.RequirePassed(t, tests...)
}

// TestVMVethSecondKernel runs the veth collector's mapping and traffic tests
// on Debian's 6.1 kernel (the Pod objects come from an index filled directly,
// since no control plane runs in the VM).
func TestVMVethSecondKernel(t *testing.T) {
	tests := []string{"TestVethMapping", "TestVethTraffic"}
	res := Run(t, Config{
		Package: "../../collector",
		Run:     "^(TestVethMapping|TestVethTraffic)$",
		// sh: busybox's own sh would run its ip applet instead of iproute2's.
		Commands: []string{"ip", "sh", "bash", "unshare", "nsenter"},
		Timeout:  10 * time.Minute,
	})
	res.RequirePassed(t, tests...)
}
