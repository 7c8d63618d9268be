// Package nftables reads nf_tables tables of a network namespace over
// netlink, as `nft list table` shows them but without nft's text rendering,
// which dominates the cost of listing a large ruleset: chains, sets and maps
// with their elements (google/nftables), and the rules of a table with one
// raw NFT_MSG_GETRULE dump decoded in place.
package nftables

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/netlinkattr"
	"github.com/netinspect/netinspect/source/netns"
)

// Loaded reports whether asking nf_tables over netlink cannot make the
// kernel load a module: the kernel of the procfs at procfs has no module
// support (no modules file), or nf_tables is already loaded.
func Loaded(procfs string) bool {
	mods, err := os.ReadFile(filepath.Join(procfs, "modules"))
	if err != nil {
		return os.IsNotExist(err)
	}
	return bytes.HasPrefix(mods, []byte("nf_tables ")) || bytes.Contains(mods, []byte("\nnf_tables "))
}

// Families are the table families read, with their names in labels.
var Families = []struct {
	Family nftables.TableFamily
	Name   string
}{{nftables.TableFamilyIPv4, "ipv4"}, {nftables.TableFamilyIPv6, "ipv6"}}

// Table is what a listing keeps of one table.
type Table struct {
	// Family is "ipv4" (nft family ip) or "ipv6" (ip6).
	Family string
	Name   string
	// Chains are the names of the table's chains.
	Chains []string
	// Sets are its named sets and maps with their elements, without the
	// anonymous ones (the literal sets and maps of single rules).
	Sets []Set
	// Rules is the number of rules in the table.
	Rules int
	// ChainRules is what the rules of each chain that has some say, by
	// chain name.
	ChainRules map[string]RuleStats
}

// Set is a named set or map of a table.
type Set struct {
	Name     string
	Elements []Element
}

// Element is one element of a set or map.
type Element struct {
	Key []byte
	// Verdict is a verdict map element's verdict: "drop", "accept",
	// "goto", "jump", "return", "continue" ("" in a set or data map).
	Verdict string
	// Chain is the chain a verdict map's element jumps or goes to.
	Chain   string
	Comment string
	// IntervalEnd marks the closing element of an interval.
	IntervalEnd bool
}

// verdictNames names the verdicts of set elements (expr.VerdictKind).
var verdictNames = map[expr.VerdictKind]string{
	expr.VerdictDrop: "drop", expr.VerdictAccept: "accept", expr.VerdictGoto: "goto",
	expr.VerdictJump: "jump", expr.VerdictReturn: "return", expr.VerdictContinue: "continue",
}

// Reader reads the tables of one network namespace.
type Reader struct {
	// ProcFS is the procfs mountpoint, whose modules file says whether
	// nf_tables is loaded.
	ProcFS string
	// Target is the network namespace read.
	Target netns.Target
	// SkipSet, when set, names the sets that are left out of a listing
	// (their elements cost a netlink request each).
	SkipSet func(name string) bool
	// Targets, when set, names the chains whose DNAT targets and verdicts
	// are resolved through the anonymous maps their rules look up (one
	// netlink request per map, and the kernel finds a set by walking the
	// table's sets: thousands of maps cost seconds): RuleStats.DNAT and
	// Gotos then hold them. Other chains keep only what their rules say
	// literally, and their DNATMaps and VerdictMaps. Read calls Targets
	// once per table, after counting its rules, and asks the function it
	// returns about each chain.
	Targets func(t *Table) func(chain string) bool
	// Cache, when set, keeps the targets of anonymous constant DNAT maps
	// between Reads (TargetCache), so that only new maps are read.
	Cache *TargetCache
}

func (r Reader) conn(opts ...nftables.ConnOption) (*nftables.Conn, error) {
	if !r.Target.IsOwn() {
		opts = append(opts, nftables.WithNetNSFd(r.Target.FD()))
	}
	return nftables.New(opts...)
}

// HasTable reports whether a table called name exists in family ip or ip6.
// It is false, without asking the kernel, when nf_tables is not loaded.
func (r Reader) HasTable(name string) bool {
	if !Loaded(r.ProcFS) {
		return false
	}
	conn, err := r.conn()
	if err != nil {
		return false
	}
	for _, fam := range Families {
		ts, err := conn.ListTablesOfFamily(fam.Family)
		if err != nil {
			continue
		}
		for _, t := range ts {
			if t.Name == name {
				return true
			}
		}
	}
	return false
}

// Read lists the tables called name of families ip and ip6, over one
// netlink socket bounded by ctx's deadline; a family without such a table
// is left out. An error matching source.ErrAbsent says nf_tables is not
// loaded, so asking it would make the kernel load the module.
func (r Reader) Read(ctx context.Context, name string) ([]Table, error) {
	if !Loaded(r.ProcFS) {
		return nil, source.Absentf("nf_tables module not loaded")
	}
	deadline, _ := ctx.Deadline()
	conn, err := r.conn(nftables.AsLasting(), nftables.WithSockOptions(func(nc *netlink.Conn) error {
		if deadline.IsZero() {
			return nil
		}
		return nc.SetDeadline(deadline)
	}))
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	defer conn.CloseLasting()
	if r.Cache != nil {
		r.Cache.begin()
		defer r.Cache.end()
	}

	var out []Table
	for _, fam := range Families {
		tables, err := conn.ListTablesOfFamily(fam.Family)
		if err != nil {
			return nil, fmt.Errorf("list %s nftables tables: %w", fam.Name, err)
		}
		var table *nftables.Table
		for _, t := range tables {
			if t.Name == name {
				table = t
			}
		}
		if table == nil {
			continue
		}
		var handle uint64
		if r.Cache != nil && r.Targets != nil {
			handles, err := r.tableHandles(ctx, byte(fam.Family))
			if err != nil {
				return nil, fmt.Errorf("list %s nftables table handles: %w", fam.Name, err)
			}
			handle = handles[name]
		}
		t, err := r.readTable(ctx, conn, table, fam.Name, handle)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// readTable lists table; handle is its kernel handle (0: unknown, nothing
// cached).
func (r Reader) readTable(ctx context.Context, conn *nftables.Conn, table *nftables.Table, family string, handle uint64) (Table, error) {
	t := Table{Family: family, Name: table.Name}
	where := fmt.Sprintf("table %s %s", familyName(table.Family), table.Name)

	chains, err := conn.ListChainsOfTableFamily(table.Family)
	if err != nil {
		return t, fmt.Errorf("list chains of %s: %w", where, err)
	}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == table.Name {
			t.Chains = append(t.Chains, ch.Name)
		}
	}
	if err := ctx.Err(); err != nil {
		return t, err
	}

	sets, err := conn.GetSets(table)
	if err != nil {
		return t, fmt.Errorf("list sets of %s: %w", where, err)
	}
	anonymous := map[string]*nftables.Set{}
	for _, s := range sets {
		// nft names anonymous sets __set<N> (and __map<N>).
		if s.Anonymous || strings.HasPrefix(s.Name, "__") {
			anonymous[s.Name] = s
			continue
		}
		if r.SkipSet != nil && r.SkipSet(s.Name) {
			continue
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			return t, fmt.Errorf("list elements of set %s in %s: %w", s.Name, where, err)
		}
		set := Set{Name: s.Name, Elements: make([]Element, 0, len(elems))}
		for _, e := range elems {
			set.Elements = append(set.Elements, element(s, e))
		}
		t.Sets = append(t.Sets, set)
		if err := ctx.Err(); err != nil {
			return t, err
		}
	}

	if t.Rules, t.ChainRules, err = r.ruleStats(ctx, table); err != nil {
		return t, fmt.Errorf("count rules of %s: %w", where, err)
	}
	if r.Targets != nil {
		if err := r.resolveTargets(ctx, conn, &t, handle, anonymous); err != nil {
			return t, fmt.Errorf("read the anonymous maps of %s: %w", where, err)
		}
	}
	return t, nil
}

func element(s *nftables.Set, e nftables.SetElement) Element {
	el := Element{Key: e.Key, Comment: e.Comment, IntervalEnd: e.IntervalEnd}
	if isVerdictMap(s) {
		el.Verdict, el.Chain = decodeVerdict(e.Val)
	}
	return el
}

// isVerdictMap: the kernel reports a verdict map's data type as
// NFT_DATA_VERDICT (0xffffff00), which google/nftables v0.3.0 does not
// know and lists as data type 0; a data map's type (an address, a
// concatenation) is one it knows.
func isVerdictMap(s *nftables.Set) bool {
	m := s.DataType.GetNFTMagic()
	return s.IsMap && (m == 0 || m == unix.NFT_DATA_VERDICT || m == nftables.TypeVerdict.GetNFTMagic())
}

// decodeVerdict decodes the verdict of a verdict map element. google/nftables
// v0.3.0 does not (SetElement.VerdictData stays nil when listing): its
// element decoder leaves the NFTA_DATA_VERDICT attribute's nested
// NFTA_VERDICT_CODE and NFTA_VERDICT_CHAIN in Val.
func decodeVerdict(b []byte) (verdict, chain string) {
	a := netlinkattr.NewAttrs(b)
	code, hasCode := int32(0), false
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_VERDICT_CODE:
			code, hasCode = int32(netlinkattr.BE32(a.Value())), true
		case unix.NFTA_VERDICT_CHAIN:
			chain = netlinkattr.String(a.Value())
		}
	}
	if a.Err() != nil || !hasCode {
		return "", ""
	}
	return verdictNames[expr.VerdictKind(code)], chain
}

// resolveTargets reads the elements of the anonymous maps the rules of the
// chains r.Targets selects look up, and turns them into DNAT targets and
// gotos. An anonymous map belongs to the one rule that uses it, so each is
// read once. A map the rule names but the listing did not have (the ruleset
// changed in between) leaves the chain without those targets.
func (r Reader) resolveTargets(ctx context.Context, conn *nftables.Conn, t *Table, handle uint64, anonymous map[string]*nftables.Set) error {
	want := r.Targets(t)
	for chain, st := range t.ChainRules {
		if (len(st.DNATMaps) == 0 && len(st.VerdictMaps) == 0) || !want(chain) {
			continue
		}
		for _, m := range st.DNATMaps {
			set := anonymous[m.Set]
			if set == nil {
				continue
			}
			cacheable := r.Cache != nil && handle != 0 && m.Rule != 0 && set.Anonymous && set.Constant
			if cacheable {
				if targets, ok := r.Cache.get(handle, m); ok {
					st.DNAT = append(st.DNAT, targets...)
					continue
				}
			}
			elems, err := conn.GetSetElements(set)
			if err != nil {
				return fmt.Errorf("set %s of chain %s: %w", m.Set, chain, err)
			}
			var targets []netip.AddrPort
			for _, e := range elems {
				if ep, ok := m.DNATTarget(e.Val); ok {
					targets = append(targets, ep)
				}
			}
			st.DNAT = append(st.DNAT, targets...)
			if cacheable {
				r.Cache.put(handle, m, targets)
			}
		}
		for _, name := range st.VerdictMaps {
			set := anonymous[name]
			if set == nil {
				continue
			}
			elems, err := conn.GetSetElements(set)
			if err != nil {
				return fmt.Errorf("set %s of chain %s: %w", name, chain, err)
			}
			for _, e := range elems {
				if v, chain := decodeVerdict(e.Val); (v == "goto" || v == "jump") && chain != "" {
					st.Gotos = append(st.Gotos, chain)
				}
			}
		}
		st.DNATMaps, st.VerdictMaps = nil, nil
		t.ChainRules[chain] = st
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyIPv6 {
		return "ip6"
	}
	return "ip"
}

// ruleStats counts the rules of a table with one netlink dump
// (NFT_MSG_GETRULE filtered by table, dumpRules) and decodes each with
// DecodeRule: google/nftables lists rules one chain at a time and decodes
// every expression into objects.
func (r Reader) ruleStats(ctx context.Context, table *nftables.Table) (int, map[string]RuleStats, error) {
	n := 0
	chains := map[string]RuleStats{}
	err := r.dumpRules(ctx, byte(table.Family), table.Name, func(_ uint8, b []byte) error {
		n++
		chain, stats, err := DecodeRule(b)
		if err != nil {
			return fmt.Errorf("decode rule: %w", err)
		}
		cur := chains[chain]
		cur.merge(stats)
		chains[chain] = cur
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	return n, chains, nil
}

// ConcatPort decodes the port of a concatenated "<addr> . inet_proto .
// inet_service" key of a table of family ("ipv4" or "ipv6"): concatenated
// fields are each padded to 4 bytes, the port is big-endian.
func ConcatPort(key []byte, family string) (int, bool) {
	addrLen := 4
	if family == "ipv6" {
		addrLen = 16
	}
	if len(key) != addrLen+8 {
		return 0, false
	}
	return int(netlinkattr.BE16(key[addrLen+4:])), true
}

// ConcatAddrProtoPort decodes a "<addr> . inet_proto . inet_service" key of
// a table of family ("ipv4" or "ipv6"): each field padded to 4 bytes, the
// port big-endian.
func ConcatAddrProtoPort(key []byte, family string) (addr netip.Addr, proto uint8, port uint16, ok bool) {
	addrLen := 4
	if family == "ipv6" {
		addrLen = 16
	}
	if len(key) != addrLen+8 {
		return netip.Addr{}, 0, 0, false
	}
	addr, _ = netip.AddrFromSlice(key[:addrLen])
	return addr, key[addrLen], netlinkattr.BE16(key[addrLen+4:]), true
}

// ConcatProtoPort decodes an "inet_proto . inet_service" key.
func ConcatProtoPort(key []byte) (proto uint8, port uint16, ok bool) {
	if len(key) != 8 {
		return 0, 0, false
	}
	return key[0], netlinkattr.BE16(key[4:]), true
}
