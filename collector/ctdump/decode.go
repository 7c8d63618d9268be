// Package ctdump reads the whole conntrack table through ctnetlink as a
// stream: each datagram of the kernel's dump is decoded in place, in one
// reusable buffer, and every entry is handed to a callback as it is decoded.
// Nothing is kept per entry, so a pass over a full table (262,144 entries)
// costs the same few kilobytes of heap as a pass over an empty one.
//
// mdlayher/netlink's Receive and Execute (and so ti-mo/conntrack's Dump)
// collect every message of a dump into a slice before returning; for a full
// table that is hundreds of megabytes. This package reads the socket itself.
package ctdump

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Tuple is the part of a conntrack tuple the decoder keeps.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // 0 for protocols without ports (icmp)
	Proto            uint8  // IP protocol number
}

// Entry is one conntrack entry as decoded. The callback of Dump gets a
// pointer to the same Entry for every entry: copy what you keep.
type Entry struct {
	// Family is the entry's address family (unix.AF_INET or unix.AF_INET6).
	Family uint8
	// Orig is the tuple of the first packet (the client's view); Reply is
	// the tuple the answers carry, whose source differs from Orig.Dst after
	// DNAT (the backend chosen by kube-proxy).
	Orig, Reply Tuple
	// Status holds the IPS_* bits (CTA_STATUS).
	Status uint32
	// TCPState is the TCP conntrack state (TCP_CONNTRACK_*), 0 for other
	// protocols or when the kernel sent none.
	TCPState uint8
	// Zone is the conntrack zone (CTA_ZONE), 0 by default.
	Zone uint16
	// Event says what happened to the entry, for entries read by a
	// Listener; EventNone for entries of a dump.
	Event EventType
}

// EventType is the kind of a conntrack event.
type EventType uint8

// Event types a Listener reports.
const (
	EventNone    EventType = iota
	EventNew               // the entry was confirmed (NFNLGRP_CONNTRACK_NEW)
	EventDestroy           // the entry was removed (NFNLGRP_CONNTRACK_DESTROY)
)

// ctnetlink attribute types (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaProtoinfo  = 4
	ctaZone       = 18

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	ctaProtoinfoTCP      = 1
	ctaProtoinfoTCPState = 1

	// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER.
	nlaTypeMask = 0x3fff

	nfnlSubsysCTNetlink = 1
	ipctnlMsgCTNew      = 0
	ipctnlMsgCTGet      = 1
	ipctnlMsgCTDelete   = 2

	nlmsgHdrLen  = 16
	nfgenmsgLen  = 4
	nlaHdrLen    = 4
	nlmFDumpIntr = 0x10
)

// ErrMalformed is wrapped by errors about messages the decoder cannot parse.
var ErrMalformed = errors.New("malformed ctnetlink message")

// batch is the outcome of decoding one datagram.
type batch struct {
	entries     int
	done        bool
	interrupted bool
}

// decodeDatagram decodes the netlink messages of one datagram of a dump
// answering the request with sequence number seq, calling fn with e filled
// for each conntrack entry. Messages of other sequence numbers are skipped.
func decodeDatagram(b []byte, seq uint32, e *Entry, fn func(*Entry)) (batch, error) {
	return decode(b, false, seq, e, fn)
}

// decodeEvents decodes the netlink messages of one datagram of conntrack
// events (multicast, sequence number 0), calling fn for each.
func decodeEvents(b []byte, e *Entry, fn func(*Entry)) (batch, error) {
	return decode(b, true, 0, e, fn)
}

func decode(b []byte, events bool, seq uint32, e *Entry, fn func(*Entry)) (batch, error) {
	var r batch
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		mseq := binary.NativeEndian.Uint32(b[8:12])
		if l < nlmsgHdrLen || l > len(b) {
			return r, fmt.Errorf("%w: netlink message length %d with %d bytes left", ErrMalformed, l, len(b))
		}
		msg := b[nlmsgHdrLen:l]
		if a := (l + 3) &^ 3; a < len(b) {
			b = b[a:]
		} else {
			b = nil
		}
		if !events && mseq != seq {
			continue
		}
		switch typ {
		case unix.NLMSG_NOOP:
			continue
		case unix.NLMSG_DONE:
			r.done = true
			if len(msg) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(msg[:4])); code < 0 {
					return r, fmt.Errorf("dump ended with error: %w", unix.Errno(-code))
				}
			}
			return r, nil
		case unix.NLMSG_ERROR:
			if len(msg) < 4 {
				return r, fmt.Errorf("%w: short error message", ErrMalformed)
			}
			if code := int32(binary.NativeEndian.Uint32(msg[:4])); code < 0 {
				return r, unix.Errno(-code)
			}
			continue // an acknowledgement
		case unix.NLMSG_OVERRUN:
			return r, fmt.Errorf("%w: overrun", ErrMalformed)
		}
		if typ>>8 != nfnlSubsysCTNetlink {
			continue
		}
		ev := EventNone
		switch {
		case !events && typ&0xff == ipctnlMsgCTNew:
		case events && typ&0xff == ipctnlMsgCTNew:
			ev = EventNew
		case events && typ&0xff == ipctnlMsgCTDelete:
			ev = EventDestroy
		default:
			continue
		}
		if flags&nlmFDumpIntr != 0 {
			r.interrupted = true
		}
		if len(msg) < nfgenmsgLen {
			return r, fmt.Errorf("%w: message of %d bytes has no nfgenmsg", ErrMalformed, len(msg))
		}
		*e = Entry{Family: msg[0], Event: ev}
		if err := decodeEntry(msg[nfgenmsgLen:], e); err != nil {
			return r, err
		}
		fn(e)
		r.entries++
	}
	return r, nil
}

// nextAttr splits the first netlink attribute off b.
func nextAttr(b []byte) (typ uint16, val, rest []byte, err error) {
	l := int(binary.NativeEndian.Uint16(b[0:2]))
	typ = binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
	if l < nlaHdrLen || l > len(b) {
		return 0, nil, nil, fmt.Errorf("%w: attribute %d of length %d with %d bytes left", ErrMalformed, typ, l, len(b))
	}
	val = b[nlaHdrLen:l]
	if a := (l + 3) &^ 3; a < len(b) {
		rest = b[a:]
	}
	return typ, val, rest, nil
}

func decodeEntry(b []byte, e *Entry) error {
	for len(b) >= nlaHdrLen {
		typ, val, rest, err := nextAttr(b)
		if err != nil {
			return err
		}
		b = rest
		switch typ {
		case ctaTupleOrig:
			err = decodeTuple(val, &e.Orig)
		case ctaTupleReply:
			err = decodeTuple(val, &e.Reply)
		case ctaStatus:
			if len(val) >= 4 {
				e.Status = binary.BigEndian.Uint32(val)
			}
		case ctaProtoinfo:
			err = decodeProtoinfo(val, e)
		case ctaZone:
			if len(val) >= 2 {
				e.Zone = binary.BigEndian.Uint16(val)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func decodeTuple(b []byte, t *Tuple) error {
	for len(b) >= nlaHdrLen {
		typ, val, rest, err := nextAttr(b)
		if err != nil {
			return err
		}
		b = rest
		switch typ {
		case ctaTupleIP:
			err = decodeIP(val, t)
		case ctaTupleProto:
			err = decodeProto(val, t)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func decodeIP(b []byte, t *Tuple) error {
	for len(b) >= nlaHdrLen {
		typ, val, rest, err := nextAttr(b)
		if err != nil {
			return err
		}
		b = rest
		switch typ {
		case ctaIPv4Src, ctaIPv4Dst:
			if len(val) != 4 {
				return fmt.Errorf("%w: IPv4 address of %d bytes", ErrMalformed, len(val))
			}
			a := netip.AddrFrom4([4]byte(val))
			if typ == ctaIPv4Src {
				t.Src = a
			} else {
				t.Dst = a
			}
		case ctaIPv6Src, ctaIPv6Dst:
			if len(val) != 16 {
				return fmt.Errorf("%w: IPv6 address of %d bytes", ErrMalformed, len(val))
			}
			a := netip.AddrFrom16([16]byte(val))
			if typ == ctaIPv6Src {
				t.Src = a
			} else {
				t.Dst = a
			}
		}
	}
	return nil
}

func decodeProto(b []byte, t *Tuple) error {
	for len(b) >= nlaHdrLen {
		typ, val, rest, err := nextAttr(b)
		if err != nil {
			return err
		}
		b = rest
		switch typ {
		case ctaProtoNum:
			if len(val) >= 1 {
				t.Proto = val[0]
			}
		case ctaProtoSrcPort:
			if len(val) >= 2 {
				t.SrcPort = binary.BigEndian.Uint16(val)
			}
		case ctaProtoDstPort:
			if len(val) >= 2 {
				t.DstPort = binary.BigEndian.Uint16(val)
			}
		}
	}
	return nil
}

func decodeProtoinfo(b []byte, e *Entry) error {
	for len(b) >= nlaHdrLen {
		typ, val, rest, err := nextAttr(b)
		if err != nil {
			return err
		}
		b = rest
		if typ != ctaProtoinfoTCP {
			continue
		}
		for len(val) >= nlaHdrLen {
			ityp, ival, irest, err := nextAttr(val)
			if err != nil {
				return err
			}
			val = irest
			if ityp == ctaProtoinfoTCPState && len(ival) >= 1 {
				e.TCPState = ival[0]
			}
		}
	}
	return nil
}
