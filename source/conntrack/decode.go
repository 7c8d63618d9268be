// Package conntrack reads the kernel's connection tracking table of a
// network namespace: its size, limit and per-CPU statistics (ctnetlink, with
// /proc/net/stat/nf_conntrack and the nf_conntrack_count/max sysctls as the
// fallback), every entry of it as a stream (Dumper, Scanner), and its NEW and
// DESTROY events (Listener).
//
// Entries are decoded in place, in reusable buffers, and handed to a
// callback as they are decoded; nothing is kept per entry, so a pass over a
// full table (262,144 entries) costs the same few kilobytes of heap as a pass
// over an empty one. mdlayher/netlink's Receive and Execute (and so
// ti-mo/conntrack's Dump) collect every message of a dump into a slice
// before returning; for a full table that is hundreds of megabytes. This
// package reads the socket itself.
package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netlinkattr"
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
	// Timeout is the entry's remaining lifetime in whole seconds
	// (CTA_TIMEOUT, which ctnetlink puts in every dumped entry): a packet
	// refreshes it to the protocol's timeout for the entry's state, so an
	// entry whose Timeout stays near that value is still in use. 0 when the
	// kernel sent none (events of destroyed entries).
	Timeout uint32
	// Start is when the entry was created, in nanoseconds since the Unix
	// epoch (CTA_TIMESTAMP_START), only when nf_conntrack_timestamp was on
	// at that time (it is off by default); 0 otherwise.
	Start uint64
	// Event says what happened to the entry, for entries read by a
	// Listener; EventNone for entries of a dump.
	Event EventType
}

// TCPStateNames are the names of enum tcp_conntrack
// (include/uapi/linux/netfilter/nf_conntrack_tcp.h) in lower case, as
// conntrack -L prints them and node_exporter names socket states;
// SYN_SENT2 is the simultaneous open.
var TCPStateNames = [...]string{"none", "syn_sent", "syn_recv", "established", "fin_wait",
	"close_wait", "last_ack", "time_wait", "close", "syn_sent2"}

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
	ctaTimeout    = 7
	ctaZone       = 18
	ctaTimestamp  = 20

	ctaTimestampStart = 1

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

	nfnlSubsysCTNetlink = 1
	ipctnlMsgCTNew      = 0
	ipctnlMsgCTGet      = 1
	ipctnlMsgCTDelete   = 2

	nlmsgHdrLen  = netlinkattr.MsgHdrLen
	nfgenmsgLen  = netlinkattr.NfgenLen
	nlaHdrLen    = netlinkattr.AttrHdrLen
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
		h, msg, rest, err := netlinkattr.SplitMessage(b)
		if err != nil {
			return r, wrap(err)
		}
		b = rest
		if !events && h.Seq != seq {
			continue
		}
		switch h.Type {
		case unix.NLMSG_NOOP:
			continue
		case unix.NLMSG_DONE:
			r.done = true
			if len(msg) >= 4 {
				if err := netlinkattr.Errno(msg); err != nil {
					return r, fmt.Errorf("dump ended with error: %w", err)
				}
			}
			return r, nil
		case unix.NLMSG_ERROR:
			if err := netlinkattr.Errno(msg); err != nil {
				if errors.Is(err, netlinkattr.ErrMalformed) {
					return r, fmt.Errorf("%w: short error message", ErrMalformed)
				}
				return r, err
			}
			continue // an acknowledgement
		case unix.NLMSG_OVERRUN:
			return r, fmt.Errorf("%w: overrun", ErrMalformed)
		}
		if h.Type>>8 != nfnlSubsysCTNetlink {
			continue
		}
		ev := EventNone
		switch {
		case !events && h.Type&0xff == ipctnlMsgCTNew:
		case events && h.Type&0xff == ipctnlMsgCTNew:
			ev = EventNew
		case events && h.Type&0xff == ipctnlMsgCTDelete:
			ev = EventDestroy
		default:
			continue
		}
		if h.Flags&nlmFDumpIntr != 0 {
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

// wrap makes an error of netlinkattr.Split wrap ErrMalformed.
func wrap(err error) error { return fmt.Errorf("%w: %w", ErrMalformed, err) }

// The decoders below walk one nesting level each with netlinkattr.Split,
// which keeps the attribute in registers: they run for every entry of a
// full table.

func decodeEntry(b []byte, e *Entry) error {
	for len(b) >= nlaHdrLen {
		typ, val, rest, err := netlinkattr.Split(b)
		if err != nil {
			return wrap(err)
		}
		b = rest
		switch typ {
		case ctaTupleOrig:
			err = decodeTuple(val, &e.Orig)
		case ctaTupleReply:
			err = decodeTuple(val, &e.Reply)
		case ctaStatus:
			if len(val) >= 4 {
				e.Status = netlinkattr.BE32(val)
			}
		case ctaProtoinfo:
			err = decodeProtoinfo(val, e)
		case ctaZone:
			if len(val) >= 2 {
				e.Zone = netlinkattr.BE16(val)
			}
		case ctaTimeout:
			e.Timeout = netlinkattr.BE32(val)
		case ctaTimestamp:
			err = decodeTimestamp(val, e)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// decodeTimestamp reads CTA_TIMESTAMP_START (big-endian u64 nanoseconds of
// wall-clock time) from a CTA_TIMESTAMP nest.
func decodeTimestamp(b []byte, e *Entry) error {
	for len(b) >= nlaHdrLen {
		typ, val, rest, err := netlinkattr.Split(b)
		if err != nil {
			return wrap(err)
		}
		b = rest
		if typ == ctaTimestampStart && len(val) >= 8 {
			e.Start = binary.BigEndian.Uint64(val)
		}
	}
	return nil
}

func decodeTuple(b []byte, t *Tuple) error {
	for len(b) >= nlaHdrLen {
		typ, val, rest, err := netlinkattr.Split(b)
		if err != nil {
			return wrap(err)
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
		typ, val, rest, err := netlinkattr.Split(b)
		if err != nil {
			return wrap(err)
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
		typ, val, rest, err := netlinkattr.Split(b)
		if err != nil {
			return wrap(err)
		}
		b = rest
		switch typ {
		case ctaProtoNum:
			if len(val) >= 1 {
				t.Proto = val[0]
			}
		case ctaProtoSrcPort:
			if len(val) >= 2 {
				t.SrcPort = netlinkattr.BE16(val)
			}
		case ctaProtoDstPort:
			if len(val) >= 2 {
				t.DstPort = netlinkattr.BE16(val)
			}
		}
	}
	return nil
}

func decodeProtoinfo(b []byte, e *Entry) error {
	for len(b) >= nlaHdrLen {
		typ, val, rest, err := netlinkattr.Split(b)
		if err != nil {
			return wrap(err)
		}
		b = rest
		if typ != ctaProtoinfoTCP {
			continue
		}
		for len(val) >= nlaHdrLen {
			ityp, ival, irest, err := netlinkattr.Split(val)
			if err != nil {
				return wrap(err)
			}
			val = irest
			if ityp == ctaProtoinfoTCPState && len(ival) >= 1 {
				e.TCPState = ival[0]
			}
		}
	}
	return nil
}
