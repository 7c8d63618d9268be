package nftables

import (
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netlinkattr"
)

// RuleStats is what the rules of a chain say about the endpoints it
// balances over, as kube-proxy 1.37 writes them: "dnat to numgen random mod
// N map { 0 : ip . port, ... }", or "dnat to ip:port" for one endpoint.
type RuleStats struct {
	// Modulus is the largest "numgen ... mod N" of the rules.
	Modulus uint32
	// NAT is set when a rule has a nat expression (dnat, snat, masquerade).
	NAT bool
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

// DecodeRule reads the attributes of an NFT_MSG_NEWRULE message (after the
// nfgenmsg): the rule's chain and, from its expressions, numgen moduli and
// nat (include/uapi/linux/netfilter/nf_tables.h). Attribute values are in
// network byte order.
func DecodeRule(b []byte) (string, RuleStats, error) {
	var chain string
	var st RuleStats
	a := netlinkattr.NewAttrs(b)
	for a.Next() {
		switch a.Type() {
		case unix.NFTA_RULE_CHAIN:
			chain = netlinkattr.String(a.Value())
		case unix.NFTA_RULE_EXPRESSIONS:
			if err := decodeExprs(a.Value(), &st); err != nil {
				return "", st, err
			}
		}
	}
	return chain, st, a.Err()
}

func decodeExprs(b []byte, st *RuleStats) error {
	return eachExpr(b, func(name string, data []byte) error {
		switch name {
		case "nat":
			st.NAT = true
		case "numgen":
			ng := netlinkattr.NewAttrs(data)
			for ng.Next() {
				if ng.Type() == unix.NFTA_NG_MODULUS {
					st.Modulus = max(st.Modulus, netlinkattr.BE32(ng.Value()))
				}
			}
			return ng.Err()
		}
		return nil
	})
}

// eachExpr calls fn with the name and the data of each expression of a
// rule's NFTA_RULE_EXPRESSIONS, in order, stopping at fn's first error.
func eachExpr(b []byte, fn func(name string, data []byte) error) error {
	list := netlinkattr.NewAttrs(b)
	for list.Next() {
		if list.Type() != unix.NFTA_LIST_ELEM {
			continue
		}
		var name string
		var data []byte
		e := netlinkattr.NewAttrs(list.Value())
		for e.Next() {
			switch e.Type() {
			case unix.NFTA_EXPR_NAME:
				name = netlinkattr.String(e.Value())
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
