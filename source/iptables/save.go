package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/netinspect/netinspect/kubeproxy"
	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/source/nftables"
)

// Families of a listing, in order, and their nf_tables families.
var (
	families    = [2]string{"ipv4", "ipv6"}
	nftFamilies = [2]uint8{nftables.FamilyIPv4, nftables.FamilyIPv6}
)

// saveCommands are the save commands of each backend of iptables 1.8, per
// family.
var saveCommands = map[string][2]string{
	"nft":    {"iptables-nft-save", "ip6tables-nft-save"},
	"legacy": {"iptables-legacy-save", "ip6tables-legacy-save"},
	"":       {"iptables-save", "ip6tables-save"},
}

// Backends that Reader.Backend may force.
const (
	BackendNFT    = "nft"
	BackendLegacy = "legacy"
)

// Reader lists every table of both families: the nft backend's over
// netlink (readNFT), falling back to iptables-nft-save per family, the
// legacy backend's with one iptables-save run each. It remembers the backend it detected while the hint chains that
// decided it stay, and must not be used by two listings at once.
type Reader struct {
	// Backend forces the backend, BackendNFT or BackendLegacy; "" detects
	// it as kubernetes-sigs/iptables-wrappers does.
	Backend string
	// ProcFS is the procfs mountpoint, whose modules file says whether
	// nf_tables is loaded.
	ProcFS string
	// Target is the network namespace to list (through nsenter when it is
	// not the caller's own).
	Target netns.Target
	// ExecOnly lists the nft backend with iptables-nft-save too, instead
	// of reading nf_tables over netlink.
	ExecOnly bool

	// listed, when set (tests), runs between the chain listing and the
	// rule dumps of readNFT.
	listed func()

	detected string
}

// Listing is one listing of both families.
type Listing struct {
	// Backend is the backend listed: nft, legacy, or "" for the only one
	// a distribution without the -nft and -legacy names ships.
	Backend string
	// Detected is set when Backend was newly detected from hint chains by
	// this listing (it is then reused until they vanish).
	Detected bool
	// Families are the IPv4 listing, then the IPv6 one unless the node
	// has no ip6tables-save or no IPv6 netfilter.
	Families []Family
	// Fallback is why a family of the nft backend was listed with
	// iptables-nft-save instead of over netlink (nil when none was).
	Fallback error
}

// Family is the listing of one address family.
type Family struct {
	// Name is "ipv4" or "ipv6".
	Name  string
	Rules *Ruleset
}

// Family returns the listing of the named family, or nil.
func (l *Listing) Family(name string) *Ruleset {
	for _, f := range l.Families {
		if f.Name == name {
			return f.Rules
		}
	}
	return nil
}

// Read detects the backend (unless forced or remembered), then lists and
// parses every table of each family. An error matching source.ErrAbsent
// says the node has no iptables-save.
func (r *Reader) Read(ctx context.Context) (*Listing, error) {
	backend := r.Backend
	if backend == "" {
		backend = r.detected
	}
	if backend == "" {
		var err error
		if backend, err = r.detectBackend(ctx); err != nil {
			return nil, err
		}
	}
	l := &Listing{Backend: backend}
	hinted := false
	for i, family := range families {
		bin, err := saveCommand(backend, i)
		if err != nil {
			if i == 1 {
				// No ip6tables-save: list IPv4 only.
				continue
			}
			return nil, err
		}
		var rs *Ruleset
		if backend == BackendNFT && !r.ExecOnly {
			// nf_tables answers over netlink what iptables-nft-save
			// would print, without its cost; it stays the fallback.
			rs, err = r.readNFT(ctx, nftFamilies[i])
			if err != nil {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("read %s iptables-nft rules: %w", family, err)
				}
				l.Fallback, rs = errors.Join(l.Fallback, fmt.Errorf("%s: %w", family, err)), nil
			}
		}
		if rs == nil {
			out, err := r.run(ctx, bin)
			if err != nil {
				if i == 1 && isIP6Absent(err) {
					// A kernel without IPv6 netfilter: list IPv4 only.
					continue
				}
				return nil, fmt.Errorf("list %s rules with %s: %w", family, bin, err)
			}
			if rs, err = ParseSave(out); err != nil {
				return nil, fmt.Errorf("parse %s output: %w", bin, err)
			}
		}
		hinted = hinted || rs.Hinted()
		l.Families = append(l.Families, Family{Name: family, Rules: rs})
	}
	if r.Backend == "" {
		if hinted {
			l.Detected = r.detected != backend
			r.detected = backend
		} else {
			// No hint chains (kube-proxy or kubelet gone or not yet
			// started): detect again next time.
			r.detected = ""
		}
	}
	return l, nil
}

// Hinted reports whether the ruleset's mangle table holds one of
// kubeproxy.HintChains.
func (rs *Ruleset) Hinted() bool {
	m := rs.Table("mangle")
	if m == nil {
		return false
	}
	for _, h := range kubeproxy.HintChains {
		if _, ok := m.Chains[h]; ok {
			return true
		}
	}
	return false
}

// detectBackend decides between iptables-nft and iptables-legacy as
// kubernetes-sigs/iptables-wrappers does: the backend holding kubelet's or
// kube-proxy's hint chains in the mangle table wins (nft first); without
// hints, the one with more rules; nft when both are empty.
//
// The legacy backend is listed without -t: iptables-legacy-save then
// lists only the tables in /proc/net/ip_tables_names, so it cannot make the
// kernel load a table module.
func (r *Reader) detectBackend(ctx context.Context) (string, error) {
	nftOK := nftables.Loaded(r.ProcFS)
	nftBin, nftErr := exec.LookPath("iptables-nft-save")
	legBin, legErr := exec.LookPath("iptables-legacy-save")
	if nftErr != nil && legErr != nil {
		if _, err := exec.LookPath("iptables-save"); err != nil {
			return "", source.Absentf("no iptables-save on PATH")
		}
		return "", nil
	}
	var nftRules, legRules int
	if nftErr == nil && nftOK {
		if out, err := r.run(ctx, nftBin, "-t", "mangle"); err == nil {
			if rs, err := ParseSave(out); err == nil && rs.Hinted() {
				return BackendNFT, nil
			}
		}
	}
	if legErr == nil {
		if out, err := r.run(ctx, legBin); err == nil {
			if rs, err := ParseSave(out); err == nil {
				if rs.Hinted() {
					return BackendLegacy, nil
				}
				legRules = rs.Rules()
			}
		}
	}
	if nftErr != nil || !nftOK {
		// Without nf_tables loaded nothing uses the nft backend, and
		// listing it would load the module.
		return BackendLegacy, nil
	}
	if legRules > 0 {
		if out, err := r.run(ctx, nftBin); err == nil {
			if rs, err := ParseSave(out); err == nil {
				nftRules = rs.Rules()
			}
		}
	}
	if legRules > nftRules {
		return BackendLegacy, nil
	}
	return BackendNFT, nil
}

// Rules is the number of rules in every table of the ruleset.
func (rs *Ruleset) Rules() int {
	n := 0
	for _, t := range rs.Tables {
		for _, c := range t.Chains {
			n += c
		}
	}
	return n
}

func saveCommand(backend string, family int) (string, error) {
	name := saveCommands[backend][family]
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	// Distributions without the -nft/-legacy names ship only one backend.
	if p, err2 := exec.LookPath(saveCommands[""][family]); err2 == nil {
		return p, nil
	}
	return "", source.Absentf("%s not on PATH", name)
}

// run runs a listing command, inside r.Target. iptables-save takes no
// xtables lock (only writers do), so it needs no -w; the context bounds it
// instead.
func (r *Reader) run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	argv := append([]string{bin}, args...)
	if !r.Target.IsOwn() {
		argv = append([]string{"nsenter", "--net=" + r.Target.Path(), "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", strings.Join(argv, " "), ctx.Err())
		}
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// isIP6Absent reports whether ip6tables-save failed because the kernel has
// no IPv6 netfilter tables.
func isIP6Absent(err error) bool {
	s := err.Error()
	return strings.Contains(s, "Address family not supported") || strings.Contains(s, "ip6_tables_names")
}
