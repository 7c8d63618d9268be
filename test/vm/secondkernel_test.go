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
