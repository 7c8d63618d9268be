package nftables

import (
	"context"
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/netlinkattr"
)

// NATPortRange is the source port range of one source-NAT rule: the
// ports NAT picks translated source ports from.
type NATPortRange struct {
	// Family is "ipv4" or "ipv6".
	Family string
	Lo, Hi uint16
	// Table and Chain name where the rule is, as nft names them.
	Table, Chain string
}

// Which rules name a range, and how they say it
// (include/uapi/linux/netfilter/nf_tables.h, nf_nat.h):
//
//   - nft "masquerade to :lo-hi" and "snat to addr:lo-hi": a masq or nat
//     (type snat) expression whose NFTA_*_REG_PROTO_MIN/MAX registers an
//     immediate expression loaded with the big-endian ports just before.
//   - iptables-nft's -j MASQUERADE/SNAT --to-ports / --to-source addr:lo-hi:
//     an xt "target" expression (nft_compat) carrying x_tables' own struct:
//     struct nf_nat_ipv4_multi_range_compat for IPv4 MASQUERADE and SNAT
//     revision 0, struct nf_nat_range / nf_nat_range2 (same leading
//     fields) for IPv6 MASQUERADE and SNAT revisions 1 and 2; the range
//     counts only with NF_NAT_RANGE_PROTO_SPECIFIED.
//
// iptables-legacy keeps its rules in x_tables, which netlink does not show;
// rules there are not read.

// NAT family numbers of nfgenmsg and NFTA_NAT_FAMILY.
const (
	nfprotoInet = 1
	nfprotoIPv4 = 2
	nfprotoIPv6 = 10
)

// ReadNATPortRanges dumps every rule of every nf_tables table of the
// namespace (one NFT_MSG_GETRULE dump) and returns the port ranges of its
// source-NAT rules, in dump order. The dump is decoded datagram by
// datagram in one reused buffer (dumpRules). An error matching source.ErrAbsent says
// nf_tables is not loaded (asking would load it).
func (r Reader) ReadNATPortRanges(ctx context.Context) ([]NATPortRange, error) {
	if !Loaded(r.ProcFS) {
		return nil, source.Absentf("nf_tables module not loaded")
	}
	var out []NATPortRange
	err := r.dumpRules(ctx, unix.AF_UNSPEC, "", func(family uint8, b []byte) error {
		ranges, err := DecodeNATPortRanges(family, b)
		if err != nil {
			return fmt.Errorf("decode rule: %w", err)
		}
		out = append(out, ranges...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DecodeNATPortRanges reads the attributes of an NFT_MSG_NEWRULE message
// (after the nfgenmsg, whose family is family) and returns the source port
// ranges its source-NAT expressions name; none for other rules.
func DecodeNATPortRanges(family uint8, b []byte) ([]NATPortRange, error) {
	var table, chain string
	var exprs []byte
	a := netlinkattr.NewAttrs(b)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_RULE_TABLE:
			table = netlinkattr.String(a.Value())
		case unix.NFTA_RULE_CHAIN:
			chain = netlinkattr.String(a.Value())
		case unix.NFTA_RULE_EXPRESSIONS:
			exprs = a.Value()
		}
	}
	if err := a.Err(); err != nil {
		return nil, err
	}
	var (
		out  []NATPortRange
		regs registers
	)
	emit := func(fam uint8, lo, hi uint16) {
		if lo == 0 && hi == 0 {
			return
		}
		if hi < lo {
			lo, hi = hi, lo
		}
		for _, f := range natFamilies(fam) {
			out = append(out, NATPortRange{Family: f, Lo: lo, Hi: hi, Table: table, Chain: chain})
		}
	}
	err := EachExpr(exprs, func(name, data []byte) error {
		switch string(name) {
		case "immediate":
			return decodeImmediate(data, &regs, &RuleStats{})
		case "masq":
			lo, hi, ok, err := protoRegs(data, unix.NFTA_MASQ_REG_PROTO_MIN, unix.NFTA_MASQ_REG_PROTO_MAX, nil)
			if ok {
				emit(family, regs.port(lo), regs.port(hi))
			}
			return err
		case "nat":
			var typ, fam uint32
			lo, hi, ok, err := protoRegs(data, unix.NFTA_NAT_REG_PROTO_MIN, unix.NFTA_NAT_REG_PROTO_MAX, func(t uint16, v []byte) {
				switch t {
				case unix.NFTA_NAT_TYPE:
					typ = netlinkattr.BE32(v)
				case unix.NFTA_NAT_FAMILY:
					fam = netlinkattr.BE32(v)
				}
			})
			if ok && typ == unix.NFT_NAT_SNAT {
				emit(uint8(fam), regs.port(lo), regs.port(hi))
			}
			return err
		case "target":
			var tname string
			var rev uint32
			var info []byte
			err := netlinkattr.Walk(data, func(t uint16, v []byte) error {
				switch t {
				case unix.NFTA_TARGET_NAME:
					tname = netlinkattr.String(v)
				case unix.NFTA_TARGET_REV:
					rev = netlinkattr.BE32(v)
				case unix.NFTA_TARGET_INFO:
					info = v
				}
				return nil
			})
			if lo, hi, ok := xtNATRange(family, tname, rev, info); ok {
				emit(family, lo, hi)
			}
			return err
		}
		return nil
	})
	return out, err
}

// protoRegs reads the registers of a NAT expression's port range (the
// attributes minAttr and maxAttr; max defaults to min), handing its other
// attributes to other; ok is false when the expression names no range.
func protoRegs(data []byte, minAttr, maxAttr uint16, other func(typ uint16, v []byte)) (lo, hi uint32, ok bool, err error) {
	err = netlinkattr.Walk(data, func(t uint16, v []byte) error {
		switch t {
		case minAttr:
			lo, ok = netlinkattr.BE32(v), true
		case maxAttr:
			hi = netlinkattr.BE32(v)
		default:
			if other != nil {
				other(t, v)
			}
		}
		return nil
	})
	if hi == 0 {
		hi = lo
	}
	return lo, hi, ok, err
}

// natFamilies are the families a rule of nft family fam applies to.
func natFamilies(fam uint8) []string {
	switch fam {
	case nfprotoIPv4:
		return []string{"ipv4"}
	case nfprotoIPv6:
		return []string{"ipv6"}
	case nfprotoInet:
		return []string{"ipv4", "ipv6"}
	}
	return nil
}

// Offsets of the range in x_tables' NAT target structs
// (include/uapi/linux/netfilter/nf_nat.h): struct
// nf_nat_ipv4_multi_range_compat is rangesize, then flags, min_ip, max_ip,
// min, max (u32, be32, be32, be16, be16); struct nf_nat_range and
// nf_nat_range2 are flags, min_addr, max_addr (16 bytes each), min_proto,
// max_proto.
const (
	xtCompatFlags, xtCompatMin = 4, 16
	xtRangeFlags, xtRangeMin   = 0, 36
)

// xtNATRange decodes the port range of an iptables MASQUERADE or SNAT
// target of a table of family.
func xtNATRange(family uint8, name string, rev uint32, info []byte) (lo, hi uint16, ok bool) {
	if name != "MASQUERADE" && name != "SNAT" {
		return 0, 0, false
	}
	flagsAt, minAt := xtRangeFlags, xtRangeMin
	if family == nfprotoIPv4 && rev == 0 {
		flagsAt, minAt = xtCompatFlags, xtCompatMin
	}
	if len(info) < minAt+4 {
		return 0, 0, false
	}
	if binary.NativeEndian.Uint32(info[flagsAt:])&unix.NF_NAT_RANGE_PROTO_SPECIFIED == 0 {
		return 0, 0, false
	}
	lo, hi = binary.BigEndian.Uint16(info[minAt:]), binary.BigEndian.Uint16(info[minAt+2:])
	if hi < lo {
		lo, hi = hi, lo
	}
	return lo, hi, true
}
