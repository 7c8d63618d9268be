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
		// The attribution collector reads the same table through its own
		// dump decoder; TCP states and status bits as 6.1 reports them.
		"TestAttributionCountsPerPodAndService",
		"TestAttributionStatesMatchConntrackCLI",
		// Status-filtered dumps (CTA_STATUS_MASK, Linux 5.19) split a pass.
		"TestAttributionSplitPassCountsTheSame",
		"TestAttributionSplitsRealNATTraffic",
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
		Modules:  append(append([]string(nil), DefaultModules...), "nf_tables", "nft_ct", "nft_chain_nat", "nft_nat"),
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

// iptablesCommands are what the iptables and nftables collector tests and
// the collector itself exec. Debian's iptables names are symlinks (through
// /etc/alternatives) to xtables-nft-multi and xtables-legacy-multi, which
// pick their mode from argv[0]: each name is copied under its own name.
var iptablesCommands = []string{
	"iptables-nft", "ip6tables-nft", "iptables-nft-save", "ip6tables-nft-save",
	"iptables-nft-restore", "ip6tables-nft-restore",
	"iptables-legacy", "ip6tables-legacy", "iptables-legacy-save", "ip6tables-legacy-save",
	"iptables-legacy-restore", "ip6tables-legacy-restore",
	"nft", "ip", "nsenter",
}

// iptablesFiles are what those commands read beyond their shared
// libraries: the xtables extensions iptables dlopens for every match and
// target, and the protocol names iptables and nft resolve.
var iptablesFiles = []string{"/usr/lib/x86_64-linux-gnu/xtables", "/etc/protocols", "/etc/services"}

// TestVMIPTablesSecondKernel runs the iptables collector's integration
// tests on Debian's 6.1 kernel, with both iptables backends: nft through
// nft_compat's xt matches, and legacy through ip_tables.
func TestVMIPTablesSecondKernel(t *testing.T) {
	tests := []string{
		"TestIPTablesCollector", "TestIPTablesCollector/nft", "TestIPTablesCollector/legacy",
		"TestIPTablesModeDetection", "TestIPTablesAttributionByHash", "TestIPTablesNoIPTablesSave",
	}
	res := Run(t, Config{
		Package:  "../../collector",
		Run:      "^(TestIPTablesCollector|TestIPTablesModeDetection|TestIPTablesAttributionByHash|TestIPTablesNoIPTablesSave)$",
		Modules:  iptablesModules(),
		Commands: iptablesCommands,
		Files:    iptablesFiles,
		Timeout:  10 * time.Minute,
	})
	res.RequirePassed(t, tests...)
}

// TestVMNFTablesReaderSecondKernel runs the nftables reader's check of
// the guest's module list (whether asking nf_tables would load it) on
// Debian's 6.1 kernel; it moved with the reader to source/nftables.
func TestVMNFTablesReaderSecondKernel(t *testing.T) {
	res := Run(t, Config{
		Package: "../../source/nftables",
		Run:     "^TestNFTablesLoaded$",
		Timeout: 5 * time.Minute,
	})
	res.RequirePassed(t, "TestNFTablesLoaded")
}

// TestVMNFTablesSecondKernel runs the nftables collector's integration
// tests on Debian's 6.1 kernel: the collector reads kube-proxy's table over
// netlink, and the expectation comes from nft's own JSON listing.
func TestVMNFTablesSecondKernel(t *testing.T) {
	tests := []string{"TestNFTablesCollector", "TestNFTablesAbsent"}
	res := Run(t, Config{
		Package:  "../../collector",
		Run:      "^(TestNFTablesCollector|TestNFTablesAbsent)$",
		Modules:  iptablesModules(),
		Commands: iptablesCommands, // the read-only check lists iptables too
		Files:    iptablesFiles,
		Timeout:  10 * time.Minute,
	})
	res.RequirePassed(t, tests...)
}

// iptablesModules are the netfilter modules kube-proxy's rules (as the
// fixture writes them) need in both iptables backends and in nftables,
// since the guest has no modprobe to load them on demand.
func iptablesModules() []string {
	return append(append([]string(nil), DefaultModules...),
		// xt matches and targets of the rules, shared by both backends.
		"x_tables", "xt_tcpudp", "xt_comment", "xt_mark", "xt_conntrack", "xt_statistic",
		"xt_recent", "xt_addrtype", "xt_nat", "xt_MASQUERADE", "ipt_REJECT", "ip6t_REJECT",
		// legacy backend tables.
		"ip_tables", "iptable_filter", "iptable_nat", "iptable_mangle",
		"ip6_tables", "ip6table_filter", "ip6table_nat", "ip6table_mangle",
		// nft backend and kube-proxy's nftables mode.
		"nf_tables", "nft_compat", "nft_chain_nat", "nft_nat", "nft_masq", "nft_ct",
		"nft_numgen", "nft_fib_ipv4", "nft_fib_ipv6", "nft_reject_ipv4", "nft_reject_ipv6",
	)
}
