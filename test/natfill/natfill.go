// Package natfill makes conntrack tables of NATed connections with real
// packets, with known counts, as ground truth for the stale-entry and
// SNAT port counting tests:
//
//   - FillDNAT sends datagrams (and TCP SYNs) from a test namespace to
//     service addresses that an nft DNAT rule, as kube-proxy's Service rules
//     do, sends to chosen backends: a table of IPS_DST_NAT entries with a
//     known count per (original destination, reply source), IPv4 and IPv6.
//   - NewMasquerade builds clients behind a router namespace that
//     masquerades (nft or iptables) towards one server, and opens real TCP
//     connections and UDP flows through it: a table of IPS_SRC_NAT entries
//     in the router whose translated ports the server sees.
//
// List and the count helpers read `conntrack -L` in a namespace, the way an
// engineer checks by hand.
//
// Which source ports MASQUERADE uses (net/netfilter/nf_nat_core.c,
// get_unique_tuple and nf_nat_l4proto_unique_tuple, Linux 6.18): it keeps
// the client's source port when the translated tuple is still unique;
// otherwise, when the rule names no port range (no --to-ports, no nft
// "to :lo-hi"), it picks one in 1024-65535 for original ports >= 1024
// (1-511 and 600-1023 for lower ones), with at most 128 tries from a
// random offset and then halved windows; with a range, in the rule's
// range. net.ipv4.ip_local_port_range, which is per namespace, bounds only
// the ports of sockets of that namespace, not the ports NAT picks for
// forwarded connections: TestMasqueradeIgnoresTheRouterLocalPortRange
// shows it.
package natfill

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// Tuple is one direction of a conntrack entry as `conntrack -L` prints it.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // 0 for protocols without ports
}

// Entry is one line of `conntrack -L`.
type Entry struct {
	Proto uint8 // IP protocol number
	// Orig is the tuple of the first packet, Reply the one answers carry:
	// after DNAT Reply.Src is the backend, after SNAT Reply.Dst is the
	// translated source and Reply.DstPort the translated port.
	Orig, Reply Tuple
	// Unreplied and Assured are the [UNREPLIED] and [ASSURED] marks.
	Unreplied, Assured bool
}

// ListFilter narrows List to NATed entries, as conntrack's own options do.
type ListFilter string

// Filters of List.
const (
	AllEntries ListFilter = ""
	DstNAT     ListFilter = "--dst-nat"
	SrcNAT     ListFilter = "--src-nat"
)

// List runs `conntrack -L -f ipv4` and `-f ipv6` (with filter) in ns and
// parses their output.
func List(t testing.TB, ns *netns.NS, filter ListFilter) []Entry {
	t.Helper()
	testenv.RequireCommand(t, "conntrack")
	var out []Entry
	for _, family := range []string{"ipv4", "ipv6"} {
		argv := []string{"conntrack", "-L", "-f", family}
		if filter != AllEntries {
			argv = append(argv, string(filter))
		}
		// Stdout only: the CLI prints its summary line on stderr.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		text, err := ns.Command(ctx, argv...).Output()
		cancel()
		if err != nil {
			t.Fatalf("in netns %s: %s: %v", ns.Name, strings.Join(argv, " "), err)
		}
		entries, err := ParseList(string(text))
		if err != nil {
			t.Fatalf("in netns %s: %s: %v", ns.Name, strings.Join(argv, " "), err)
		}
		out = append(out, entries...)
	}
	return out
}

// ParseList parses the default output of `conntrack -L`: per line the
// protocol's name and number, the timeout, the TCP state, then src= dst=
// sport= dport= of the original and then of the reply direction, with
// [UNREPLIED] and [ASSURED] marks between and after.
func ParseList(text string) ([]Entry, error) {
	var out []Entry
	for n, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: %q", n+1, line)
		}
		proto, err := strconv.ParseUint(f[1], 10, 8)
		if err != nil {
			return nil, fmt.Errorf("line %d: protocol number %q: %w", n+1, f[1], err)
		}
		e := Entry{Proto: uint8(proto)}
		dir := -1 // 0 orig, 1 reply; a new direction starts at src=
		for _, tok := range f[2:] {
			switch tok {
			case "[UNREPLIED]":
				e.Unreplied = true
				continue
			case "[ASSURED]":
				e.Assured = true
				continue
			}
			k, v, ok := strings.Cut(tok, "=")
			if !ok {
				continue
			}
			if k == "src" {
				dir++
			}
			if dir < 0 || dir > 1 {
				continue
			}
			tu := &e.Orig
			if dir == 1 {
				tu = &e.Reply
			}
			switch k {
			case "src", "dst":
				a, err := netip.ParseAddr(v)
				if err != nil {
					return nil, fmt.Errorf("line %d: %s: %w", n+1, tok, err)
				}
				if k == "src" {
					tu.Src = a
				} else {
					tu.Dst = a
				}
			case "sport", "dport":
				p, err := strconv.ParseUint(v, 10, 16)
				if err != nil {
					return nil, fmt.Errorf("line %d: %s: %w", n+1, tok, err)
				}
				if k == "sport" {
					tu.SrcPort = uint16(p)
				} else {
					tu.DstPort = uint16(p)
				}
			}
		}
		if dir != 1 {
			return nil, fmt.Errorf("line %d has %d tuples: %q", n+1, dir+1, line)
		}
		out = append(out, e)
	}
	return out, nil
}

// ProtoName is the lower-case name of the IP protocols the fixtures use.
func ProtoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}
