// Package iptables reads the iptables rules of a network namespace, of the
// backend the node uses, nft or legacy, detected as
// kubernetes-sigs/iptables-wrappers does, into per-chain rule counts and
// kube-proxy's service chains: the nft backend's from nf_tables over
// netlink, decoded into what iptables-nft-save would print (and listed
// with iptables-nft-save when a rule cannot be translated exactly), the
// legacy backend's by parsing iptables-save's listing.
//
// The parser and the rule decoder take bytes and return plain structs, so
// they are unit tested and fuzzed without a kernel.
package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/netinspect/netinspect/kubeproxy"
)

// Ruleset is one iptables-save listing (one address family).
type Ruleset struct {
	Tables []*Table
}

// Table returns the named table, or nil.
func (r *Ruleset) Table(name string) *Table {
	for _, t := range r.Tables {
		if t.Name == name {
			return t
		}
	}
	return nil
}

// Table is what the parser keeps of one table.
type Table struct {
	Name string
	// Chains maps every chain declared in the table to its number of rules.
	Chains map[string]int
	// Services holds, per service-port hash (the 16 characters after
	// KUBE-SVC-, KUBE-SVL-, KUBE-EXT-, KUBE-FW-), what the rules say of it,
	// in the form kube-proxy's drift comparison reads (KubeProxyListing).
	Services map[string]*ServiceChains
	// NoEndpoints maps the service port names that kube-proxy rejects
	// because they have no endpoints ("ns/name:port has no endpoints") to
	// the port of the cluster IP rule (0 when none was seen).
	NoEndpoints map[string]int
	// SetMatches counts rules in KUBE- chains that match an ipset
	// (--match-set), which among kube-proxy's modes only ipvs writes.
	SetMatches int

	lastChain string
	tokBuf    []byte
}

// ServiceChains is one service port as seen in the chains sharing its hash:
// kubeproxy.IPTablesServicePort, filled by the parser (PortName from a rule
// comment, empty when kube-proxy dropped the comments in a large cluster and
// none was seen; Protocol and Port from the cluster IP rule in
// KUBE-SERVICES; HasSVC and HasSVL; the distinct KUBE-SEP- chains the
// KUBE-SVC- and KUBE-SVL- chains jump to).
type ServiceChains = kubeproxy.IPTablesServicePort

// KubeProxyListing is what the listing shows of kube-proxy's per-service
// rules, for kubeproxy's drift comparison: the nat table's service chains
// and the filter table's "has no endpoints" rejects, shared with r (not
// copied).
func (r *Ruleset) KubeProxyListing() *kubeproxy.IPTablesListing {
	l := &kubeproxy.IPTablesListing{}
	if nat := r.Table("nat"); nat != nil {
		l.Services = nat.Services
	}
	if filter := r.Table("filter"); filter != nil {
		l.Rejected = filter.NoEndpoints
	}
	return l
}

// ErrMalformed is wrapped by parse errors.
var ErrMalformed = errors.New("malformed iptables-save output")

// ParseSave parses the output of iptables-save (any tables, with or
// without counters) into per-chain rule counts and kube-proxy's service
// chains.
func ParseSave(data []byte) (*Ruleset, error) {
	rs := &Ruleset{}
	var cur *Table
	lineNo := 0
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		lineNo++
		line = bytes.TrimRight(line, "\r")
		if len(line) == 0 {
			continue
		}
		switch line[0] {
		case '#':
			continue
		case '*':
			if cur != nil {
				return nil, fmt.Errorf("line %d: table %q starts before COMMIT of %q: %w", lineNo, line[1:], cur.Name, ErrMalformed)
			}
			cur = newTable(string(line[1:]))
			rs.Tables = append(rs.Tables, cur)
		case ':':
			if cur == nil {
				return nil, fmt.Errorf("line %d: chain outside a table: %w", lineNo, ErrMalformed)
			}
			name, _, _ := bytes.Cut(line[1:], []byte(" "))
			if len(name) == 0 {
				return nil, fmt.Errorf("line %d: empty chain name: %w", lineNo, ErrMalformed)
			}
			cur.declareChain(string(name))
		case '-':
			if cur == nil {
				return nil, fmt.Errorf("line %d: rule outside a table: %w", lineNo, ErrMalformed)
			}
			if err := cur.addRule(line); err != nil {
				return nil, fmt.Errorf("line %d: %w", lineNo, err)
			}
		case '[':
			// "[pkts:bytes] -A ..." with iptables-save -c.
			if cur == nil {
				return nil, fmt.Errorf("line %d: rule outside a table: %w", lineNo, ErrMalformed)
			}
			_, rest, ok := bytes.Cut(line, []byte("] "))
			if !ok {
				return nil, fmt.Errorf("line %d: counters without a rule: %w", lineNo, ErrMalformed)
			}
			if err := cur.addRule(rest); err != nil {
				return nil, fmt.Errorf("line %d: %w", lineNo, err)
			}
		default:
			if bytes.Equal(line, []byte("COMMIT")) {
				if cur == nil {
					return nil, fmt.Errorf("line %d: COMMIT outside a table: %w", lineNo, ErrMalformed)
				}
				cur = nil
				continue
			}
			return nil, fmt.Errorf("line %d: unexpected %q: %w", lineNo, truncate(line, 40), ErrMalformed)
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("table %q has no COMMIT (listing cut short?): %w", cur.Name, ErrMalformed)
	}
	return rs, nil
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

func newTable(name string) *Table {
	return &Table{
		Name:        name,
		Chains:      map[string]int{},
		Services:    map[string]*ServiceChains{},
		NoEndpoints: map[string]int{},
	}
}

// declareChain adds a chain of the table, with no rules yet.
func (t *Table) declareChain(chain string) {
	if _, ok := t.Chains[chain]; !ok {
		t.Chains[chain] = 0
	}
	if prefix, hash, ok := kubeproxy.HashedChain(chain); ok {
		switch prefix {
		case kubeproxy.PrefixSVC:
			t.service(hash).HasSVC = true
		case kubeproxy.PrefixSVL:
			t.service(hash).HasSVL = true
		}
	}
}

func (t *Table) service(hash string) *ServiceChains {
	sc := t.Services[hash]
	if sc == nil {
		sc = &ServiceChains{}
		t.Services[hash] = sc
	}
	return sc
}

// addRule counts one "-A CHAIN ..." line and takes from it what attributes
// kube-proxy's chains to services.
func (t *Table) addRule(line []byte) error {
	tk := tokenizer{rest: line, buf: t.tokBuf[:0]}
	defer func() { t.tokBuf = tk.buf[:0] }()
	op, ok := tk.next()
	if !ok || !bytes.Equal(op, []byte("-A")) {
		return fmt.Errorf("rule %q does not start with -A: %w", truncate(line, 40), ErrMalformed)
	}
	chainB, ok := tk.next()
	if !ok || len(chainB) == 0 {
		return fmt.Errorf("rule without a chain: %w", ErrMalformed)
	}
	var target, comment, proto, dport []byte
	setMatches := 0
	for bytes.HasPrefix(chainB, []byte("KUBE-")) {
		tok, ok := tk.next()
		if !ok {
			break
		}
		switch {
		case bytes.Equal(tok, []byte("-j")), bytes.Equal(tok, []byte("-g")):
			target, _ = tk.next()
		case bytes.Equal(tok, []byte("--comment")):
			comment, _ = tk.next()
		case bytes.Equal(tok, []byte("-p")):
			proto, _ = tk.next()
		case bytes.Equal(tok, []byte("--dport")):
			dport, _ = tk.next()
		case bytes.Equal(tok, []byte("--match-set")):
			setMatches++
		}
	}
	if tk.err != nil {
		return tk.err
	}
	return t.addRuleFields(chainB, target, comment, proto, dport, setMatches)
}

// addRuleFields counts one rule of chain and takes from it what attributes
// kube-proxy's chains to services, from what iptables-save prints of it:
// its target (-j or -g), comment (--comment), protocol (-p), destination
// port (--dport, as printed: "80" or "80:90") and the number of ipsets it
// matches (--match-set). Only the rules of KUBE- chains need the fields.
// Both the iptables-save parser and the nf_tables reader feed it.
func (t *Table) addRuleFields(chainB, target, comment, proto, dport []byte, setMatches int) error {
	// Rules are grouped by chain, so the previous rule's chain string is
	// reused instead of allocating one per rule.
	if t.lastChain == "" || t.lastChain != string(chainB) {
		if _, declared := t.Chains[string(chainB)]; !declared {
			return fmt.Errorf("rule in undeclared chain %q: %w", chainB, ErrMalformed)
		}
		t.lastChain = string(chainB)
	}
	chain := t.lastChain
	t.Chains[chain]++

	if !bytes.HasPrefix(chainB, []byte("KUBE-")) {
		return nil
	}
	t.SetMatches += setMatches

	portName := commentServicePortName(comment)
	if bytes.HasSuffix(comment, []byte(" has no endpoints")) {
		if portName != "" {
			port := t.NoEndpoints[portName]
			if port == 0 {
				port, _ = strconv.Atoi(string(dport))
			}
			t.NoEndpoints[portName] = port
		}
		return nil
	}

	// A rule in a service's own chain names the service in its comment
	// ("ns/name:port -> 10.0.0.1:80") and jumps to an endpoint chain.
	if prefix, hash, ok := kubeproxy.HashedChain(chain); ok && prefix != kubeproxy.PrefixSEP {
		sc := t.service(hash)
		if sc.PortName == "" && portName != "" {
			sc.PortName = portName
		}
		if (prefix == kubeproxy.PrefixSVC || prefix == kubeproxy.PrefixSVL) && bytes.HasPrefix(target, []byte(kubeproxy.PrefixSEP)) {
			if sc.Endpoints == nil {
				sc.Endpoints = map[string]struct{}{}
			}
			if _, seen := sc.Endpoints[string(target)]; !seen {
				sc.Endpoints[string(target)] = struct{}{}
			}
		}
	}
	// A jump to a service chain from KUBE-SERVICES, KUBE-NODEPORTS... names
	// the service ("ns/name:port cluster IP") and, for the cluster IP, its
	// protocol and port. These comments are kept even in large clusters.
	if len(target) > 0 {
		if prefix, hash, ok := kubeproxy.HashedChain(string(target)); ok && prefix != kubeproxy.PrefixSEP {
			sc := t.service(hash)
			if sc.PortName == "" && portName != "" {
				sc.PortName = portName
			}
			if bytes.HasSuffix(comment, []byte(" cluster IP")) && len(dport) > 0 {
				if p, err := strconv.Atoi(string(dport)); err == nil {
					sc.Port = p
				}
				sc.Protocol = strings.ToLower(string(proto))
			}
		}
	}
	return nil
}

// commentServicePortName returns the service port name a kube-proxy comment
// starts with ("ns/name:port cluster IP", "ns/name:port -> 10.0.0.1:80",
// "ns/name:port"), or "" when the comment does not name one.
func commentServicePortName(comment []byte) string {
	if len(comment) == 0 {
		return ""
	}
	first, _, _ := bytes.Cut(comment, []byte(" "))
	if bytes.IndexByte(first, '/') <= 0 {
		return ""
	}
	s := string(first)
	if _, _, _, ok := kubeproxy.SplitServicePortName(s); !ok {
		return ""
	}
	return s
}

// tokenizer splits an iptables-save rule line into arguments the way
// iptables-restore does: separated by spaces, with double-quoted arguments
// in which a backslash escapes the next character.
type tokenizer struct {
	rest []byte
	buf  []byte
	err  error
}

// next returns the next argument. Quoted arguments are unescaped into a
// buffer shared by one line's arguments, so every slice stays valid while
// the line is parsed.
func (tk *tokenizer) next() ([]byte, bool) {
	i := 0
	for i < len(tk.rest) && (tk.rest[i] == ' ' || tk.rest[i] == '\t') {
		i++
	}
	tk.rest = tk.rest[i:]
	if len(tk.rest) == 0 {
		return nil, false
	}
	if tk.rest[0] != '"' {
		j := bytes.IndexAny(tk.rest, " \t")
		if j < 0 {
			j = len(tk.rest)
		}
		tok := tk.rest[:j]
		tk.rest = tk.rest[j:]
		return tok, true
	}
	start := len(tk.buf)
	for j := 1; j < len(tk.rest); j++ {
		switch c := tk.rest[j]; c {
		case '\\':
			if j+1 < len(tk.rest) {
				j++
				tk.buf = append(tk.buf, tk.rest[j])
			}
		case '"':
			tk.rest = tk.rest[j+1:]
			return tk.buf[start:len(tk.buf):len(tk.buf)], true
		default:
			tk.buf = append(tk.buf, c)
		}
	}
	tk.err = fmt.Errorf("unterminated quote: %w", ErrMalformed)
	tk.rest = nil
	return nil, false
}
