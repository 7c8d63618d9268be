// Package netlinkattr reads and writes netlink messages and attributes in
// place, for the hand-written decoders of the kernel readers under source/.
//
// mdlayher/netlink's AttributeDecoder and Message types copy what they
// decode; a dump of a full conntrack table or of thousands of IPVS virtual
// servers is decoded here without allocating: Messages and Attrs are
// iterators over the bytes the kernel sent.
package netlinkattr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// ErrMalformed is wrapped by the errors of Messages and Attrs about bytes
// that are not netlink messages or attributes.
var ErrMalformed = errors.New("malformed netlink data")

// Header lengths (include/uapi/linux/netlink.h, linux/netfilter/nfnetlink.h).
const (
	MsgHdrLen  = unix.SizeofNlMsghdr // struct nlmsghdr
	AttrHdrLen = unix.SizeofNlAttr   // struct nlattr
	NfgenLen   = 4                   // struct nfgenmsg: family, version, res_id
)

// typeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from an attribute
// type.
const typeMask = 0x3fff

// align rounds n up to the 4-byte netlink alignment.
func align(n int) int { return (n + 3) &^ 3 }

// Attrs iterates over the netlink attributes of b without allocating:
//
//	for a := netlinkattr.NewAttrs(b); a.Next(); {
//		switch a.Type() { ... a.Value() ... }
//	}
//	if err := a.Err(); ...
//
// It stops at the first attribute whose length does not fit, and Err then
// says so; a trailing part shorter than an attribute header is ignored, as
// the kernel's nla_for_each_attr does.
type Attrs struct {
	rest []byte
	typ  uint16
	val  []byte
	err  error
}

// NewAttrs returns an iterator over the attributes of b.
func NewAttrs(b []byte) Attrs { return Attrs{rest: b} }

// Next advances to the next attribute and reports whether there is one.
func (a *Attrs) Next() bool {
	if len(a.rest) < AttrHdrLen {
		return false
	}
	var err error
	a.typ, a.val, a.rest, err = Split(a.rest)
	if err != nil {
		a.err, a.rest = err, nil
		return false
	}
	return true
}

// Split splits the first attribute off b, which must hold at least
// AttrHdrLen bytes: its type (without the nested and byte-order flags), its
// value and the attributes after it. It is what Attrs is built on, for the
// hot loops that keep the three in registers (a conntrack dump decodes
// about twenty attributes per entry).
func Split(b []byte) (typ uint16, val, rest []byte, err error) {
	l := int(binary.NativeEndian.Uint16(b[0:2]))
	typ = binary.NativeEndian.Uint16(b[2:4]) & typeMask
	if l < AttrHdrLen || l > len(b) {
		return 0, nil, nil, badLength("attribute", int(typ), l, len(b))
	}
	val = b[AttrHdrLen:l]
	if n := align(l); n < len(b) {
		rest = b[n:]
	}
	return typ, val, rest, nil
}

// Type is the current attribute's type, without the nested and byte-order
// flags.
func (a *Attrs) Type() uint16 { return a.typ }

// Value is the current attribute's payload; it aliases the iterated bytes.
func (a *Attrs) Value() []byte { return a.val }

// Err is the error that stopped the iteration, if any.
func (a *Attrs) Err() error { return a.err }

// Walk calls fn for each attribute of b, stopping at fn's first error.
func Walk(b []byte, fn func(typ uint16, val []byte) error) error {
	a := NewAttrs(b)
	for a.Next() {
		if err := fn(a.Type(), a.Value()); err != nil {
			return err
		}
	}
	return a.Err()
}

// badLength is the error about a message or attribute whose length does
// not fit; out of line, so that the splitters stay cheap enough to inline.
//
//go:noinline
func badLength(what string, typ, l, left int) error {
	if typ >= 0 {
		return fmt.Errorf("%w: %s %d of length %d with %d bytes left", ErrMalformed, what, typ, l, left)
	}
	return fmt.Errorf("%w: %s of length %d with %d bytes left", ErrMalformed, what, l, left)
}

// Messages iterates over the netlink messages of one datagram without
// allocating, like Attrs over attributes.
type Messages struct {
	rest    []byte
	hdr     Header
	payload []byte
	err     error
}

// Header is the part of struct nlmsghdr the readers use.
type Header struct {
	Len   uint32
	Type  uint16
	Flags uint16
	Seq   uint32
}

// NewMessages returns an iterator over the messages of the datagram b.
func NewMessages(b []byte) Messages { return Messages{rest: b} }

// Next advances to the next message and reports whether there is one.
func (m *Messages) Next() bool {
	if len(m.rest) < MsgHdrLen {
		return false
	}
	var err error
	m.hdr, m.payload, m.rest, err = SplitMessage(m.rest)
	if err != nil {
		m.err, m.rest = err, nil
		return false
	}
	return true
}

// SplitMessage splits the first netlink message off the datagram b, which
// must hold at least MsgHdrLen bytes: its header, its payload and the
// messages after it. It is what Messages is built on, for the hot loops
// that keep the three in registers.
func SplitMessage(b []byte) (h Header, payload, rest []byte, err error) {
	l := int(binary.NativeEndian.Uint32(b[0:4]))
	if l < MsgHdrLen || l > len(b) {
		return h, nil, nil, badLength("netlink message", -1, l, len(b))
	}
	h = Header{
		Len:   uint32(l),
		Type:  binary.NativeEndian.Uint16(b[4:6]),
		Flags: binary.NativeEndian.Uint16(b[6:8]),
		Seq:   binary.NativeEndian.Uint32(b[8:12]),
	}
	if n := align(l); n < len(b) {
		rest = b[n:]
	}
	return h, b[MsgHdrLen:l], rest, nil
}

// Header is the current message's header.
func (m *Messages) Header() Header { return m.hdr }

// Payload is the current message's payload (after the header); it aliases
// the iterated bytes.
func (m *Messages) Payload() []byte { return m.payload }

// Err is the error that stopped the iteration, if any.
func (m *Messages) Err() error { return m.err }

// Errno returns the error an NLMSG_ERROR or NLMSG_DONE payload carries: nil
// for 0 (an acknowledgement, or a dump that ended well), the errno for a
// negative code. A payload too short for the code is ErrMalformed.
func Errno(payload []byte) error {
	if len(payload) < 4 {
		return fmt.Errorf("%w: error message of %d bytes", ErrMalformed, len(payload))
	}
	if code := int32(binary.NativeEndian.Uint32(payload[:4])); code < 0 {
		return unix.Errno(-code)
	}
	return nil
}

// Append appends an attribute of type typ holding val, padded to the
// netlink alignment.
func Append(b []byte, typ uint16, val []byte) []byte {
	l := AttrHdrLen + len(val)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	for i := l; i%4 != 0; i++ {
		b = append(b, 0)
	}
	return b
}

// AppendUint16 appends an attribute holding v in host byte order.
func AppendUint16(b []byte, typ, v uint16) []byte {
	return Append(b, typ, binary.NativeEndian.AppendUint16(nil, v))
}

// AppendUint32 appends an attribute holding v in host byte order.
func AppendUint32(b []byte, typ uint16, v uint32) []byte {
	return Append(b, typ, binary.NativeEndian.AppendUint32(nil, v))
}

// AppendBE16 appends an attribute holding v in network byte order.
func AppendBE16(b []byte, typ, v uint16) []byte {
	return Append(b, typ, binary.BigEndian.AppendUint16(nil, v))
}

// AppendBE32 appends an attribute holding v in network byte order, as
// ctnetlink's and nf_tables' u32 attributes are.
func AppendBE32(b []byte, typ uint16, v uint32) []byte {
	b = binary.NativeEndian.AppendUint16(b, AttrHdrLen+4)
	b = binary.NativeEndian.AppendUint16(b, typ)
	return binary.BigEndian.AppendUint32(b, v)
}

// AppendString appends a NUL-terminated string attribute (NLA_NUL_STRING).
func AppendString(b []byte, typ uint16, s string) []byte {
	return Append(b, typ, append([]byte(s), 0))
}

// Uint8 is the first byte of b, 0 when b is empty.
func Uint8(b []byte) uint8 {
	if len(b) < 1 {
		return 0
	}
	return b[0]
}

// Uint16 reads a host-order u16 attribute value; 0 when b is too short.
func Uint16(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.NativeEndian.Uint16(b)
}

// Uint32 reads a host-order u32 attribute value; 0 when b is too short.
func Uint32(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binary.NativeEndian.Uint32(b)
}

// Uint64 reads a host-order u64 attribute value; 0 when b is too short.
func Uint64(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.NativeEndian.Uint64(b)
}

// BE16 reads a network-order u16 attribute value (ports); 0 when b is too
// short.
func BE16(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

// BE32 reads a network-order u32 attribute value; 0 when b is too short.
func BE32(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

// String reads a NUL-terminated string attribute, without the NUL.
func String(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// InetAddr decodes an address of family (unix.AF_INET or AF_INET6) from the
// start of b, as a union nf_inet_addr or an IFA_ADDRESS holds it; the zero
// Addr when b is too short or the family is neither.
func InetAddr(family uint16, b []byte) netip.Addr {
	switch {
	case family == unix.AF_INET && len(b) >= 4:
		return netip.AddrFrom4([4]byte(b[:4]))
	case family == unix.AF_INET6 && len(b) >= 16:
		return netip.AddrFrom16([16]byte(b[:16]))
	}
	return netip.Addr{}
}

// AppendInetAddr appends addr as a 16-byte union nf_inet_addr (an IPv4
// address in its first 4 bytes).
func AppendInetAddr(b []byte, addr netip.Addr) []byte {
	var u [16]byte
	if addr.Is4() {
		a := addr.As4()
		copy(u[:], a[:])
	} else {
		u = addr.As16()
	}
	return append(b, u[:]...)
}

// AppendUint64 appends an attribute holding v in host byte order.
func AppendUint64(b []byte, typ uint16, v uint64) []byte {
	return Append(b, typ, binary.NativeEndian.AppendUint64(nil, v))
}
