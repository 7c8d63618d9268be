package nftables

import (
	"bytes"
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netlinkattr"
)

// RuleStats is what the rules of a chain say about where they send packets,
// as kube-proxy 1.37 writes them: "dnat to numgen random mod N map { 0 : ip
// . port, ... }", "dnat to ip:port" for one endpoint, "goto <chain>", and
// "numgen random mod N vmap { 0 : goto <chain>, ... }" with session
// affinity.
type RuleStats struct {
	// Modulus is the largest "numgen ... mod N" of the rules.
	Modulus uint32
	// NAT is set when a rule has a nat expression (dnat, snat, masquerade).
	NAT bool
	// DNAT are the addresses and ports the rules DNAT to: those given
	// literally, and (once the reader resolved DNATMaps) the data of the
	// anonymous maps a lookup selects them from. In rule order, not
	// deduplicated.
	DNAT []netip.AddrPort
	// Gotos are the chains the rules jump or go to: literal verdicts, and
	// (once the reader resolved VerdictMaps) the verdicts of the anonymous
	// verdict maps they look up.
	Gotos []string
	// DNATMaps and VerdictMaps are the sets whose elements DNAT and Gotos
	// still need (a rule names a set, not its elements); Reader.Read
	// resolves those of anonymous sets for the chains Reader.Targets
	// selects and then clears them.
	DNATMaps    []DNATMap
	VerdictMaps []string
}

// DNATMap is a map whose data are the address (at AddrOffset) and port (at
// PortOffset, 2 bytes big-endian) of a DNAT: nft pads each concatenated
// field to 4 bytes, so "ipv4_addr . inet_service" data is the address at 0
// and the port at 4 (16 for IPv6).
type DNATMap struct {
	Set                    string
	IPv6                   bool
	AddrOffset, PortOffset int
	// Rule is the handle of the rule that looks the map up: unique in its
	// table for the table's life (a changed rule is a new rule), and an
	// anonymous constant map lives and dies with its rule.
	Rule uint64
}

// Endpoints is the number of endpoints a chain with these rules balances
// over: the numgen modulus, 1 for a lone nat, else 0.
func (r RuleStats) Endpoints() int {
	switch {
	case r.Modulus > 0:
		return int(r.Modulus)
	case r.NAT:
		return 1
	}
	return 0
}

// merge adds the rule o to the chain's stats r.
func (r *RuleStats) merge(o RuleStats) {
	r.Modulus = max(r.Modulus, o.Modulus)
	r.NAT = r.NAT || o.NAT
	r.DNAT = append(r.DNAT, o.DNAT...)
	r.Gotos = append(r.Gotos, o.Gotos...)
	r.DNATMaps = append(r.DNATMaps, o.DNATMaps...)
	r.VerdictMaps = append(r.VerdictMaps, o.VerdictMaps...)
}

// DecodeRule reads the attributes of an NFT_MSG_NEWRULE message (after the
// nfgenmsg): the rule's chain and, from its expressions, numgen moduli,
// nat, DNAT targets and verdicts (include/uapi/linux/netfilter/nf_tables.h).
// Attribute values are in network byte order.
func DecodeRule(b []byte) (string, RuleStats, error) {
	var chain string
	var st RuleStats
	var handle uint64
	a := netlinkattr.NewAttrs(b)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_RULE_CHAIN:
			chain = netlinkattr.String(a.Value())
		case unix.NFTA_RULE_HANDLE:
			if v := a.Value(); len(v) == 8 {
				handle = binary.BigEndian.Uint64(v)
			}
		case unix.NFTA_RULE_EXPRESSIONS:
			if err := decodeExprs(a.Value(), &st); err != nil {
				return "", st, err
			}
		}
	}
	for i := range st.DNATMaps {
		st.DNATMaps[i].Rule = handle
	}
	return chain, st, a.Err()
}

// Registers: NFT_REG_VERDICT (0), NFT_REG_1..4 (16 bytes each) and
// NFT_REG32_00..15 (4 bytes each) name the same 64 bytes of register
// space. regs follows, per 4-byte slot, what the rule's expressions loaded
// into it, as far as the DNAT targets need: a literal value, or a field of
// the data of a map lookup.
const regSlots = 16

type slot struct {
	value []byte // literal 4 bytes (or fewer), from an immediate
	set   string // or the data of a lookup in set, at byte offset off
	off   int
}

type registers [regSlots]slot

// RegisterSlots is the number of 4-byte slots of the data registers.
const RegisterSlots = regSlots

// RegisterSlot is the first 4-byte slot (0 to RegisterSlots-1) of data
// register reg, or -1: NFT_REG_1..4 (16 bytes each) and NFT_REG32_00..15
// (4 bytes each) name the same space.
func RegisterSlot(reg uint32) int {
	switch {
	case reg >= unix.NFT_REG_1 && reg <= unix.NFT_REG_4:
		return int(reg-unix.NFT_REG_1) * 4
	case reg >= unix.NFT_REG32_00 && reg < unix.NFT_REG32_00+regSlots:
		return int(reg - unix.NFT_REG32_00)
	}
	return -1
}

// load records n bytes of v (literal) or of set's data (v nil) written to
// reg.
func (r *registers) load(reg uint32, v []byte, set string, n int) {
	s := RegisterSlot(reg)
	if s < 0 {
		return
	}
	for i := 0; i*4 < n && s+i < regSlots; i++ {
		if v != nil {
			r[s+i] = slot{value: v[i*4 : min(i*4+4, len(v))]}
		} else {
			r[s+i] = slot{set: set, off: i * 4}
		}
	}
}

// clear forgets n bytes of registers from reg on.
func (r *registers) clear(reg uint32, n int) {
	s := RegisterSlot(reg)
	for i := 0; s >= 0 && i*4 < n && s+i < regSlots; i++ {
		r[s+i] = slot{}
	}
}

// port is the big-endian port an immediate loaded at the start of register
// reg, as nft_reg_load16 reads it, or 0.
func (r *registers) port(reg uint32) uint16 {
	s := RegisterSlot(reg)
	if s < 0 || len(r[s].value) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(r[s].value)
}

// lookupDataMax is the longest map data whose fields are followed: an IPv6
// address and a port.
const lookupDataMax = 20

func decodeExprs(b []byte, st *RuleStats) error {
	var regs registers
	return EachExpr(b, func(name, data []byte) error {
		switch string(name) {
		case "nat":
			return decodeNAT(data, &regs, st)
		case "numgen":
			return decodeNumgen(data, &regs, st)
		case "immediate":
			return decodeImmediate(data, &regs, st)
		case "lookup":
			return decodeLookup(data, &regs, st)
		}
		if attr, ok := clobbers[string(name)]; ok {
			return decodeClobber(data, attr, &regs)
		}
		return nil
	})
}

// EachExpr calls fn with the name and the data of each expression of a
// rule's NFTA_RULE_EXPRESSIONS, in order, stopping at fn's first error.
// name is the expression's name without its NUL, and like data it points
// into b: compare it as string(name), which does not allocate.
func EachExpr(b []byte, fn func(name, data []byte) error) error {
	list := netlinkattr.NewAttrs(b)
	for list.Next() {
		if list.Type() != unix.NFTA_LIST_ELEM {
			continue
		}
		var name, data []byte
		e := netlinkattr.NewAttrs(list.Value())
		for e.Next() {
			switch e.Type() {
			case unix.NFTA_EXPR_NAME:
				name = e.Value()
				if i := bytes.IndexByte(name, 0); i >= 0 {
					name = name[:i]
				}
			case unix.NFTA_EXPR_DATA:
				data = e.Value()
			}
		}
		if err := e.Err(); err != nil {
			return err
		}
		if err := fn(name, data); err != nil {
			return err
		}
	}
	return list.Err()
}

func decodeNumgen(data []byte, regs *registers, st *RuleStats) error {
	ng := netlinkattr.NewAttrs(data)
	var dreg uint32
	for ng.Next() {
		switch ng.Type() {
		case unix.NFTA_NG_MODULUS:
			st.Modulus = max(st.Modulus, netlinkattr.BE32(ng.Value()))
		case unix.NFTA_NG_DREG:
			dreg = netlinkattr.BE32(ng.Value())
		}
	}
	regs.clear(dreg, 4) // a number, not a target
	return ng.Err()
}

// clobbers are the data-register attributes of the other expressions that
// load a register (meta, payload, ct, fib: attribute 1; bitwise, hash: 2),
// whose values are not followed: what they load is no DNAT target.
var clobbers = map[string]uint16{"meta": 1, "payload": 1, "ct": 1, "fib": 1, "bitwise": 2, "hash": 2}

// decodeClobber forgets what a register held before an expression that is
// not followed loaded it.
func decodeClobber(data []byte, attr uint16, regs *registers) error {
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		if a.Type() == attr {
			regs.clear(netlinkattr.BE32(a.Value()), lookupDataMax)
		}
	}
	return a.Err()
}

// Immediate is an immediate expression: a literal Value loaded into data
// register DReg, or (DReg NFT_REG_VERDICT) a verdict Code, with the Chain
// of a jump or goto (without its NUL). Value and Chain point into the
// expression's data.
type Immediate struct {
	DReg  uint32
	Value []byte
	Code  int32
	Chain []byte
}

// Verdict reports whether the immediate loads the verdict register.
func (im Immediate) Verdict() bool { return im.DReg == unix.NFT_REG_VERDICT }

// DecodeImmediate decodes the data of an immediate expression.
func DecodeImmediate(data []byte) (Immediate, error) {
	var im Immediate
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_IMMEDIATE_DREG:
			im.DReg = netlinkattr.BE32(a.Value())
		case unix.NFTA_IMMEDIATE_DATA:
			d := netlinkattr.NewAttrs(a.Value())
			for d.Next() {
				switch d.Type() {
				case unix.NFTA_DATA_VALUE:
					im.Value = d.Value()
				case unix.NFTA_DATA_VERDICT:
					v := netlinkattr.NewAttrs(d.Value())
					for v.Next() {
						switch v.Type() {
						case unix.NFTA_VERDICT_CODE:
							im.Code = int32(netlinkattr.BE32(v.Value()))
						case unix.NFTA_VERDICT_CHAIN:
							im.Chain = v.Value()
							if i := bytes.IndexByte(im.Chain, 0); i >= 0 {
								im.Chain = im.Chain[:i]
							}
						}
					}
					if err := v.Err(); err != nil {
						return im, err
					}
				}
			}
			if err := d.Err(); err != nil {
				return im, err
			}
		}
	}
	return im, a.Err()
}

// decodeImmediate follows a literal loaded into a data register, and
// records a jump or goto loaded into the verdict register.
func decodeImmediate(data []byte, regs *registers, st *RuleStats) error {
	im, err := DecodeImmediate(data)
	if err != nil {
		return err
	}
	if im.Verdict() {
		if (im.Code == unix.NFT_GOTO || im.Code == unix.NFT_JUMP) && len(im.Chain) > 0 {
			st.Gotos = append(st.Gotos, string(im.Chain))
		}
		return nil
	}
	if im.Value != nil {
		regs.load(im.DReg, im.Value, "", len(im.Value))
	}
	return nil
}

// decodeLookup records a verdict map lookup (no data register: the
// verdict register), and follows the data of a map lookup into a data
// register.
func decodeLookup(data []byte, regs *registers, st *RuleStats) error {
	var set string
	dreg, hasDreg := uint32(0), false
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_LOOKUP_SET:
			set = netlinkattr.String(a.Value())
		case unix.NFTA_LOOKUP_DREG:
			dreg, hasDreg = netlinkattr.BE32(a.Value()), true
		}
	}
	if err := a.Err(); err != nil {
		return err
	}
	switch {
	case !hasDreg || set == "":
		// A membership test (ip saddr @set): no data.
	case dreg == unix.NFT_REG_VERDICT:
		st.VerdictMaps = append(st.VerdictMaps, set)
	default:
		regs.load(dreg, nil, set, lookupDataMax)
	}
	return nil
}

// decodeNAT records a DNAT's target when both its address and its port
// come from a literal, or both from the data of one map.
func decodeNAT(data []byte, regs *registers, st *RuleStats) error {
	st.NAT = true
	var typ, family uint32
	addrReg, protoReg := uint32(0), uint32(0)
	a := netlinkattr.NewAttrs(data)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_NAT_TYPE:
			typ = netlinkattr.BE32(a.Value())
		case unix.NFTA_NAT_FAMILY:
			family = netlinkattr.BE32(a.Value())
		case unix.NFTA_NAT_REG_ADDR_MIN:
			addrReg = netlinkattr.BE32(a.Value())
		case unix.NFTA_NAT_REG_PROTO_MIN:
			protoReg = netlinkattr.BE32(a.Value())
		}
	}
	if err := a.Err(); err != nil {
		return err
	}
	if typ != unix.NFT_NAT_DNAT {
		return nil
	}
	as, ps := RegisterSlot(addrReg), RegisterSlot(protoReg)
	if as < 0 || ps < 0 {
		return nil
	}
	addrLen := 4
	if family == unix.NFPROTO_IPV6 {
		addrLen = 16
	}
	if as+addrLen/4 > regSlots {
		return nil
	}
	first, port := regs[as], regs[ps]
	switch {
	case first.set == "" && port.set == "":
		var addr []byte
		for i := range addrLen / 4 {
			s := regs[as+i]
			if s.set != "" || len(s.value) != 4 {
				return nil
			}
			addr = append(addr, s.value...)
		}
		if len(port.value) < 2 {
			return nil
		}
		ip, _ := netip.AddrFromSlice(addr)
		st.DNAT = append(st.DNAT, netip.AddrPortFrom(ip, netlinkattr.BE16(port.value)))
	case first.set != "" && first.set == port.set:
		st.DNATMaps = append(st.DNATMaps, DNATMap{Set: first.set, IPv6: addrLen == 16, AddrOffset: first.off, PortOffset: port.off})
	}
	return nil
}

// DNATTarget decodes the address and port of one element's data of m; ok
// is false when the data is too short.
func (m DNATMap) DNATTarget(data []byte) (netip.AddrPort, bool) {
	addrLen := 4
	if m.IPv6 {
		addrLen = 16
	}
	if m.AddrOffset+addrLen > len(data) || m.PortOffset+2 > len(data) {
		return netip.AddrPort{}, false
	}
	ip, _ := netip.AddrFromSlice(data[m.AddrOffset : m.AddrOffset+addrLen])
	return netip.AddrPortFrom(ip, netlinkattr.BE16(data[m.PortOffset:])), true
}
