package iptables

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netlinkattr"
	"github.com/netinspect/netinspect/source/nftables"
)

// ErrUntranslatable is wrapped when an iptables-nft rule holds something
// the nf_tables reader does not translate exactly as iptables-nft-save
// would print it: the reader then falls back to iptables-nft-save.
var ErrUntranslatable = errors.New("rule not translatable without iptables-nft-save")

// nftRule is what iptables-nft-save prints of one rule, as far as
// addRuleFields reads it. Its slices point into the dump's buffer or into
// buf, so they are valid until the next rule is decoded.
type nftRule struct {
	chain, target, comment, proto, dport []byte
	setMatches                           int
	buf                                  []byte
	regs                                 [nftables.RegisterSlots]regKind
}

// regKind is what a rule's expressions loaded into a 4-byte register slot,
// as far as iptables-nft's parser (nft-ruleparse) turns a following cmp
// into -p or --dport.
type regKind uint8

const (
	regUnset regKind = iota
	regOther         // a value no field depends on
	regProto         // meta l4proto, or the IPv4/IPv6 header's protocol byte
	regDport         // 2 bytes at transport header offset 2
	regPorts         // 4 bytes at transport header offset 0: sport, dport
)

func (r *nftRule) load(reg uint32, k regKind) {
	if s := nftables.RegisterSlot(reg); s >= 0 {
		r.regs[s] = k
	}
}

func (r *nftRule) kind(reg uint32) regKind {
	if s := nftables.RegisterSlot(reg); s >= 0 {
		return r.regs[s]
	}
	return regUnset
}

// compatibleExpr reports whether iptables-nft 1.8 accepts the expression
// in a table it lists (nft_is_expr_compatible); with another one (an
// nft-native rule in an iptables table) iptables-nft-save skips the table
// as incompatible. limit and log are compatible only with some attributes
// and are left to iptables-nft-save.
func compatibleExpr(name []byte) bool {
	switch string(name) {
	case "match", "target", "payload", "meta", "cmp", "bitwise", "counter", "immediate", "lookup", "range":
		return true
	}
	return false
}

// kubeMatch reports whether iptables-nft-save prints the xt match, one of
// those besides the decoded ones (comment, tcp, udp, sctp, set) that
// kube-proxy and kubelet write and a few of the same kind, without any
// argument addRuleFields reads (-j, -g, --comment, -p, --dport,
// --match-set).
func kubeMatch(name []byte) bool {
	switch string(name) {
	case "statistic", "recent", "mark", "conntrack", "state", "addrtype", "multiport",
		"connmark", "limit", "physdev", "iprange", "mac",
		"nfacct": // kube-proxy 1.37's localhost NodePort counters
		return true
	}
	return false
}

// kubeTarget reports whether iptables-nft-save prints the xt target as
// "-j NAME" with options that hold no argument addRuleFields reads.
func kubeTarget(name []byte) bool {
	switch string(name) {
	case "REJECT", "DNAT", "SNAT", "MASQUERADE", "MARK", "CONNMARK", "NOTRACK":
		return true
	}
	return false
}

// verdictTargets are how iptables-nft-save prints the verdicts of an
// immediate that are not jumps or gotos.
var verdictTargets = map[int32]string{
	nfAccept: "ACCEPT", nfDrop: "DROP", unix.NFT_RETURN: "RETURN",
}

// NF_DROP and NF_ACCEPT (include/uapi/linux/netfilter.h).
const nfDrop, nfAccept = 0, 1

// protoNames are the protocols iptables-nft-save prints by name after -p
// whatever the node's /etc/protocols says; others depend on it and fall
// back.
var protoNames = map[uint8]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_SCTP: "sctp"}

// Match and payload layouts (include/uapi/linux/netfilter/xt_tcpudp.h,
// xt_sctp.h; nf_tables.h), in host byte order as iptables stores them.
const (
	metaKeyL4Proto      = 16 // NFT_META_L4PROTO
	sctpFlagsOffset     = 284
	xtSCTPDestPorts     = 0x02
	xtCommentMax        = 256
	udataRuleComment    = 0 // NFTNL_UDATA_RULE_COMMENT
	payloadNetworkProto = 9 // offsetof(struct iphdr, protocol)
	payloadIPv6NextHdr  = 6 // offsetof(struct ip6_hdr, ip6_nxt)
)

// decodeNFTRule decodes the attributes of one NFT_MSG_NEWRULE message of an
// iptables-nft table (family ip, or ip6 when ipv6) into r. For a rule of a
// KUBE- chain it reads every expression as iptables-nft-save would print
// it, and returns an error wrapping ErrUntranslatable for anything that
// could print an argument addRuleFields reads but is not decoded; other
// chains only count, so their rules are only checked to be ones
// iptables-nft-save lists.
func decodeNFTRule(b []byte, ipv6 bool, r *nftRule) error {
	*r = nftRule{buf: r.buf[:0]}
	var exprs, udata []byte
	a := netlinkattr.NewAttrs(b)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_RULE_CHAIN:
			r.chain = cstring(a.Value())
		case unix.NFTA_RULE_EXPRESSIONS:
			exprs = a.Value()
		case unix.NFTA_RULE_USERDATA:
			udata = a.Value()
		}
	}
	if err := a.Err(); err != nil {
		return err
	}
	if len(r.chain) == 0 {
		return fmt.Errorf("rule without a chain: %w", ErrMalformed)
	}
	kube := bytes.HasPrefix(r.chain, []byte("KUBE-"))
	verdicts := 0
	err := nftables.EachExpr(exprs, func(name, data []byte) error {
		if !compatibleExpr(name) {
			return fmt.Errorf("expression %q: %w", name, ErrUntranslatable)
		}
		if !kube {
			return nil
		}
		switch string(name) {
		case "counter":
			return nil
		case "meta":
			return r.meta(data)
		case "payload":
			return r.payload(data, ipv6)
		case "cmp":
			return r.cmp(data)
		case "range":
			return r.rangeExpr(data)
		case "bitwise":
			return r.bitwise(data)
		case "immediate":
			im, err := nftables.DecodeImmediate(data)
			if err != nil {
				return err
			}
			if !im.Verdict() {
				r.load(im.DReg, regOther)
				return nil
			}
			verdicts++
			switch {
			case im.Code == unix.NFT_JUMP || im.Code == unix.NFT_GOTO:
				r.target = im.Chain
			case verdictTargets[im.Code] != "":
				r.target = []byte(verdictTargets[im.Code])
			default:
				return fmt.Errorf("verdict %d: %w", im.Code, ErrUntranslatable)
			}
			return nil
		case "target":
			verdicts++
			name, _, _, err := xtInfo(data)
			if err != nil {
				return err
			}
			if !kubeTarget(name) {
				return fmt.Errorf("target %q: %w", name, ErrUntranslatable)
			}
			r.target = name
			return nil
		case "match":
			return r.match(data)
		}
		// lookup (ebtables' among) does not occur in kube-proxy's chains.
		return fmt.Errorf("expression %q in chain %s: %w", name, r.chain, ErrUntranslatable)
	})
	if err != nil {
		return err
	}
	if !kube {
		return nil
	}
	if verdicts > 1 {
		return fmt.Errorf("rule with %d verdicts: %w", verdicts, ErrUntranslatable)
	}
	return r.userdata(udata)
}

// cstring is b up to its first NUL.
func cstring(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

func (r *nftRule) meta(data []byte) error {
	var key, dreg uint32
	var hasDreg bool
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_META_DREG:
			dreg, hasDreg = netlinkattr.BE32(a.Value()), true
		case unix.NFTA_META_KEY:
			key = netlinkattr.BE32(a.Value())
		}
	}
	if err := a.Err(); err != nil {
		return err
	}
	if !hasDreg {
		return fmt.Errorf("meta set: %w", ErrUntranslatable)
	}
	if key == metaKeyL4Proto {
		r.load(dreg, regProto)
	} else {
		r.load(dreg, regOther)
	}
	return nil
}

func (r *nftRule) payload(data []byte, ipv6 bool) error {
	var dreg, base, off, n uint32
	var hasDreg bool
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_PAYLOAD_DREG:
			dreg, hasDreg = netlinkattr.BE32(a.Value()), true
		case unix.NFTA_PAYLOAD_BASE:
			base = netlinkattr.BE32(a.Value())
		case unix.NFTA_PAYLOAD_OFFSET:
			off = netlinkattr.BE32(a.Value())
		case unix.NFTA_PAYLOAD_LEN:
			n = netlinkattr.BE32(a.Value())
		}
	}
	if err := a.Err(); err != nil {
		return err
	}
	if !hasDreg {
		return fmt.Errorf("payload set: %w", ErrUntranslatable)
	}
	overlaps := func(at uint32, size uint32) bool { return off < at+size && at < off+n }
	k := regOther
	switch base {
	case unix.NFT_PAYLOAD_TRANSPORT_HEADER:
		switch {
		case off == 2 && n == 2:
			k = regDport
		case off == 0 && n == 4:
			// iptables-nft loads both ports at once for
			// "--sport A --dport B" (add_nft_tcpudp).
			k = regPorts
		case overlaps(2, 2):
			return fmt.Errorf("transport header load at %d, %d bytes: %w", off, n, ErrUntranslatable)
		}
	case unix.NFT_PAYLOAD_NETWORK_HEADER:
		at := uint32(payloadNetworkProto)
		if ipv6 {
			at = payloadIPv6NextHdr
		}
		switch {
		case off == at && n == 1:
			k = regProto
		case overlaps(at, 1):
			return fmt.Errorf("network header load at %d, %d bytes: %w", off, n, ErrUntranslatable)
		}
	}
	r.load(dreg, k)
	return nil
}

// dataValue is the NFTA_DATA_VALUE of a nested struct nft_data attribute.
func dataValue(b []byte) []byte {
	a := netlinkattr.NewAttrs(b)
	for a.Next() {
		if a.Type() == unix.NFTA_DATA_VALUE {
			return a.Value()
		}
	}
	return nil
}

func (r *nftRule) cmp(data []byte) error {
	var sreg, op uint32
	var value []byte
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_CMP_SREG:
			sreg = netlinkattr.BE32(a.Value())
		case unix.NFTA_CMP_OP:
			op = netlinkattr.BE32(a.Value())
		case unix.NFTA_CMP_DATA:
			value = dataValue(a.Value())
		}
	}
	if err := a.Err(); err != nil {
		return err
	}
	k := r.kind(sreg)
	if k == regOther {
		return nil
	}
	// "! -p tcp" and "! --dport 80" print the same value after the
	// option as their positive forms.
	if op != unix.NFT_CMP_EQ && op != unix.NFT_CMP_NEQ {
		return fmt.Errorf("cmp op %d: %w", op, ErrUntranslatable)
	}
	switch {
	case k == regProto && len(value) == 1:
		name, ok := protoNames[value[0]]
		if !ok || r.proto != nil {
			return fmt.Errorf("protocol %d: %w", value[0], ErrUntranslatable)
		}
		r.proto = []byte(name)
	case k == regDport && len(value) == 2:
		return r.setDport(binary.BigEndian.Uint16(value), binary.BigEndian.Uint16(value))
	case k == regPorts && len(value) == 4:
		p := binary.BigEndian.Uint16(value[2:])
		return r.setDport(p, p)
	default:
		return fmt.Errorf("cmp of %d bytes: %w", len(value), ErrUntranslatable)
	}
	return nil
}

func (r *nftRule) rangeExpr(data []byte) error {
	var sreg, op uint32
	var from, to []byte
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_RANGE_SREG:
			sreg = netlinkattr.BE32(a.Value())
		case unix.NFTA_RANGE_OP:
			op = netlinkattr.BE32(a.Value())
		case unix.NFTA_RANGE_FROM_DATA:
			from = dataValue(a.Value())
		case unix.NFTA_RANGE_TO_DATA:
			to = dataValue(a.Value())
		}
	}
	if err := a.Err(); err != nil {
		return err
	}
	switch k := r.kind(sreg); {
	case k == regOther:
		return nil
	case k == regDport && len(from) == 2 && len(to) == 2 && (op == unix.NFT_RANGE_EQ || op == unix.NFT_RANGE_NEQ):
		return r.setDport(binary.BigEndian.Uint16(from), binary.BigEndian.Uint16(to))
	}
	return fmt.Errorf("range: %w", ErrUntranslatable)
}

func (r *nftRule) bitwise(data []byte) error {
	var sreg, dreg uint32
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_BITWISE_SREG:
			sreg = netlinkattr.BE32(a.Value())
		case unix.NFTA_BITWISE_DREG:
			dreg = netlinkattr.BE32(a.Value())
		}
	}
	if err := a.Err(); err != nil {
		return err
	}
	if k := r.kind(sreg); k != regOther {
		return fmt.Errorf("bitwise on a protocol or port: %w", ErrUntranslatable)
	}
	r.load(dreg, regOther)
	return nil
}

// setDport records the destination port as tcp_save, udp_save and
// sctp_save print it: "lo" or "lo:hi". A rule that prints two is left to
// iptables-nft-save (the parser keeps the last one printed).
func (r *nftRule) setDport(lo, hi uint16) error {
	if r.dport != nil {
		return fmt.Errorf("two destination ports: %w", ErrUntranslatable)
	}
	start := len(r.buf)
	r.buf = strconv.AppendUint(r.buf, uint64(lo), 10)
	if lo != hi {
		r.buf = append(r.buf, ':')
		r.buf = strconv.AppendUint(r.buf, uint64(hi), 10)
	}
	r.dport = r.buf[start:len(r.buf):len(r.buf)]
	return nil
}

// xtInfo returns the name, revision and info of an nft_compat match or
// target (NFTA_MATCH_NAME, _REV, _INFO; the target's attributes have the
// same numbers).
func xtInfo(data []byte) (name []byte, rev uint32, info []byte, err error) {
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_MATCH_NAME:
			name = cstring(a.Value())
		case unix.NFTA_MATCH_REV:
			rev = netlinkattr.BE32(a.Value())
		case unix.NFTA_MATCH_INFO:
			info = a.Value()
		}
	}
	return name, rev, info, a.Err()
}

func (r *nftRule) match(data []byte) error {
	name, rev, info, err := xtInfo(data)
	if err != nil {
		return err
	}
	// The layouts decoded are those of revision 0 of comment, tcp, udp
	// and sctp (their only one); set revision 0 is left to
	// iptables-nft-save, which iptables 1.8 writes with revision 1 to 4.
	switch string(name) {
	case "comment", "tcp", "udp", "sctp":
		if rev != 0 {
			return fmt.Errorf("%s match revision %d: %w", name, rev, ErrUntranslatable)
		}
	case "set":
		if rev == 0 {
			return fmt.Errorf("set match revision 0: %w", ErrUntranslatable)
		}
	}
	switch string(name) {
	case "comment":
		return r.setComment(cstring(info[:min(len(info), xtCommentMax)]))
	case "set":
		r.setMatches++
	case "tcp", "udp":
		// struct xt_tcp, xt_udp: __u16 spts[2], dpts[2], ...; the
		// destination port is printed unless it is the full range.
		if len(info) < 8 {
			return fmt.Errorf("%s match of %d bytes: %w", name, len(info), ErrMalformed)
		}
		lo, hi := binary.NativeEndian.Uint16(info[4:]), binary.NativeEndian.Uint16(info[6:])
		if lo != 0 || hi != 0xffff {
			return r.setDport(lo, hi)
		}
	case "sctp":
		// struct xt_sctp_info: __u16 dpts[2], spts[2], ...; __u32
		// flags at 284 says whether dpts is matched.
		if len(info) < sctpFlagsOffset+4 {
			return fmt.Errorf("sctp match of %d bytes: %w", len(info), ErrMalformed)
		}
		if binary.NativeEndian.Uint32(info[sctpFlagsOffset:])&xtSCTPDestPorts != 0 {
			return r.setDport(binary.NativeEndian.Uint16(info[0:]), binary.NativeEndian.Uint16(info[2:]))
		}
	default:
		if !kubeMatch(name) {
			return fmt.Errorf("match %q: %w", name, ErrUntranslatable)
		}
	}
	return nil
}

// setComment records the rule's comment. iptables-save prints a comment on
// the rule's line, so one with a line break is left to iptables-nft-save,
// as is a rule with two comments.
func (r *nftRule) setComment(c []byte) error {
	if r.comment != nil || bytes.ContainsAny(c, "\n\r") {
		return fmt.Errorf("comment %q: %w", c, ErrUntranslatable)
	}
	if c == nil {
		c = []byte{}
	}
	r.comment = c
	return nil
}

// userdata reads the rule's NFTA_RULE_USERDATA, libnftnl's TLVs (type u8,
// length u8, value): the comment newer iptables-nft stores there instead of
// an xt comment match (NFTNL_UDATA_RULE_COMMENT, NUL-terminated). Another
// type (iptables 1.8.11's compat extensions, say) is left to
// iptables-nft-save.
func (r *nftRule) userdata(b []byte) error {
	for len(b) > 0 {
		if len(b) < 2 || int(b[1]) > len(b)-2 {
			return fmt.Errorf("rule userdata cut short: %w", ErrMalformed)
		}
		typ, v := b[0], b[2:2+int(b[1])]
		b = b[2+int(b[1]):]
		if typ != udataRuleComment {
			return fmt.Errorf("rule userdata type %d: %w", typ, ErrUntranslatable)
		}
		if err := r.setComment(cstring(v)); err != nil {
			return err
		}
	}
	return nil
}
