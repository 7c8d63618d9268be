package iptables

import (
	"context"
	"fmt"

	"github.com/netinspect/netinspect/source/nftables"
)

// builtinChain is a base chain iptables-nft creates (nft.c's
// xtables_ipv4/xtables_ipv6: the same hooks and priorities for both).
type builtinChain struct {
	hook     uint32
	priority int32
	typ      string
}

// NF_INET_* hooks.
const (
	hookPrerouting, hookInput, hookForward, hookOutput, hookPostrouting = 0, 1, 2, 3, 4
)

// nftTables are the tables iptables-nft lists, in the order
// iptables-nft-save prints them (enum nft_table_type), with their base
// chains. A table of another name (kube-proxy's nftables-mode table) is no
// iptables table.
var nftTables = []struct {
	name   string
	chains map[string]builtinChain
}{
	{"mangle", map[string]builtinChain{
		"PREROUTING": {hookPrerouting, -150, "filter"}, "INPUT": {hookInput, -150, "filter"},
		"FORWARD": {hookForward, -150, "filter"}, "OUTPUT": {hookOutput, -150, "route"},
		"POSTROUTING": {hookPostrouting, -150, "filter"},
	}},
	// iptables-nft gives the security chains priority 150, not
	// NF_IP_PRI_SECURITY (50), in both families (nft.c, 1.8.9).
	{"security", map[string]builtinChain{
		"INPUT": {hookInput, 150, "filter"}, "FORWARD": {hookForward, 150, "filter"}, "OUTPUT": {hookOutput, 150, "filter"},
	}},
	{"raw", map[string]builtinChain{
		"PREROUTING": {hookPrerouting, -300, "filter"}, "OUTPUT": {hookOutput, -300, "filter"},
	}},
	{"filter", map[string]builtinChain{
		"INPUT": {hookInput, 0, "filter"}, "FORWARD": {hookForward, 0, "filter"}, "OUTPUT": {hookOutput, 0, "filter"},
	}},
	{"nat", map[string]builtinChain{
		"PREROUTING": {hookPrerouting, -100, "nat"}, "INPUT": {hookInput, 100, "nat"},
		"OUTPUT": {hookOutput, -100, "nat"}, "POSTROUTING": {hookPostrouting, 100, "nat"},
	}},
}

// readNFT reads the iptables-nft tables of one family from nf_tables over
// netlink (one chain listing, one rule dump per chain) into the Ruleset
// ParseSave makes of iptables-nft-save's listing. An error wrapping
// ErrUntranslatable says iptables-nft-save must list it instead: a rule of
// a KUBE- chain holds something not translated exactly, a table holds what
// iptables-nft-save would call incompatible, or the ruleset changed while
// it was read.
func (r *Reader) readNFT(ctx context.Context, family uint8) (*Ruleset, error) {
	nr := nftables.Reader{ProcFS: r.ProcFS, Target: r.Target}
	gen, err := nr.Generation(ctx)
	if err != nil {
		return nil, err
	}
	tables, chains, err := nr.ListChains(ctx, family)
	if err != nil {
		return nil, err
	}
	if r.listed != nil {
		r.listed()
	}
	exists := map[string]bool{}
	for _, t := range tables {
		exists[t] = true
	}
	rs := &Ruleset{}
	var rule nftRule
	for _, def := range nftTables {
		if !exists[def.name] {
			continue
		}
		t := newTable(def.name)
		// iptables-nft creates a base chain only when a rule or a
		// policy needs it, and iptables-nft-save lists every built-in
		// chain of a table that exists, created or not.
		for name := range def.chains {
			t.declareChain(name)
		}
		var names []string
		for _, c := range chains {
			if c.Table != def.name {
				continue
			}
			names = append(names, c.Name)
			if c.Base {
				b, ok := def.chains[c.Name]
				if !ok || b.hook != c.Hook || b.priority != c.Priority || b.typ != c.Type {
					return nil, fmt.Errorf("table %s: base chain %s (hook %d, priority %d, type %s) is not iptables': %w",
						def.name, c.Name, c.Hook, c.Priority, c.Type, ErrUntranslatable)
				}
			}
			t.declareChain(c.Name)
		}
		err := nr.DumpChainRules(ctx, family, def.name, names, func(chain string, b []byte) error {
			if err := decodeNFTRule(b, family == nftables.FamilyIPv6, &rule); err != nil {
				return err
			}
			if string(rule.chain) != chain {
				return fmt.Errorf("rule of chain %s in the dump of %s: %w", rule.chain, chain, ErrMalformed)
			}
			if err := t.addRuleFields(rule.chain, rule.target, rule.comment, rule.proto, rule.dport, rule.setMatches); err != nil {
				// A chain the listing did not have: the rules
				// changed in between.
				return fmt.Errorf("%w: %w", ErrUntranslatable, err)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("table %s: %w", def.name, err)
		}
		rs.Tables = append(rs.Tables, t)
	}
	// The chain listing and the rule dumps are separate requests:
	// iptables-nft-save reads one generation (it retries when the
	// generation changed meanwhile), so a listing spanning two is left
	// to it.
	if now, err := nr.Generation(ctx); err != nil {
		return nil, err
	} else if now != gen {
		return nil, fmt.Errorf("ruleset changed while it was read (generation %d, now %d): %w", gen, now, ErrUntranslatable)
	}
	return rs, nil
}
