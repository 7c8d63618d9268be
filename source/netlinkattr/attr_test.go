package netlinkattr

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The iterator reads what mdlayher/netlink's encoder writes, nested
// attributes and padding included, and Append writes what its decoder
// reads.
func TestAttrsAgreeWithMdlayher(t *testing.T) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint16(1, 0x1234)
	ae.String(2, "kube-proxy")
	ae.Bytes(3, []byte{1, 2, 3}) // needs padding
	ae.Nested(4, func(ae *netlink.AttributeEncoder) error {
		ae.Uint32(5, 7)
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var got []uint16
	for a := NewAttrs(b); a.Next(); {
		got = append(got, a.Type())
		switch a.Type() {
		case 1:
			if v := Uint16(a.Value()); v != 0x1234 {
				t.Errorf("u16 %#x", v)
			}
		case 2:
			if v := String(a.Value()); v != "kube-proxy" {
				t.Errorf("string %q", v)
			}
		case 3:
			if len(a.Value()) != 3 {
				t.Errorf("bytes %v", a.Value())
			}
		case 4:
			in := NewAttrs(a.Value())
			if !in.Next() || in.Type() != 5 || Uint32(in.Value()) != 7 || in.Next() || in.Err() != nil {
				t.Errorf("nested attribute not read back")
			}
		}
	}
	if len(got) != 4 || got[3] != 4 {
		t.Errorf("types %v, want 1 2 3 4 (the nested flag stripped)", got)
	}

	var mine []byte
	mine = AppendUint16(mine, 1, 0x1234)
	mine = AppendString(mine, 2, "kube-proxy")
	mine = Append(mine, 3, []byte{1, 2, 3})
	mine = Append(mine, 4|unix.NLA_F_NESTED, AppendUint32(nil, 5, 7))
	mine = AppendBE16(mine, 6, 80)
	mine = AppendBE32(mine, 7, 0xdeadbeef)
	ad, err := netlink.NewAttributeDecoder(mine)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for ad.Next() {
		n++
		switch ad.Type() {
		case 2:
			if ad.String() != "kube-proxy" {
				t.Errorf("mdlayher reads %q", ad.String())
			}
		case 6:
			if v := binary.BigEndian.Uint16(ad.Bytes()); v != 80 {
				t.Errorf("be16 %d", v)
			}
		case 7:
			if v := binary.BigEndian.Uint32(ad.Bytes()); v != 0xdeadbeef {
				t.Errorf("be32 %#x", v)
			}
		}
	}
	if err := ad.Err(); err != nil || n != 6 {
		t.Errorf("mdlayher read %d attributes, err %v", n, err)
	}
}

func TestAttrsStopsAtMalformedLength(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		n    int
		bad  bool
	}{
		{"empty", nil, 0, false},
		{"shorter than a header", []byte{8, 0}, 0, false},
		{"length past the end", []byte{200, 0, 1, 0, 0, 0, 0, 0}, 0, true},
		{"length below the header", []byte{2, 0, 1, 0}, 0, true},
		{"one, then garbage", append(AppendUint32(nil, 1, 9), 99, 0, 2, 0), 1, true},
	} {
		a := NewAttrs(tc.in)
		n := 0
		for a.Next() {
			n++
		}
		if n != tc.n || (a.Err() != nil) != tc.bad || (tc.bad && !errors.Is(a.Err(), ErrMalformed)) {
			t.Errorf("%s: %d attributes, err %v; want %d, error %v", tc.name, n, a.Err(), tc.n, tc.bad)
		}
	}
}

func msg(typ, flags uint16, seq uint32, payload []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(MsgHdrLen+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestMessages(t *testing.T) {
	in := append(msg(0x100, 2, 7, []byte{1, 2, 3}), msg(unix.NLMSG_ERROR, 0, 8, binary.NativeEndian.AppendUint32(nil, uint32(0xffffffff)))...)
	m := NewMessages(in)
	if !m.Next() || m.Header().Type != 0x100 || m.Header().Seq != 7 || len(m.Payload()) != 3 {
		t.Fatalf("first message %+v %v", m.Header(), m.Payload())
	}
	if !m.Next() || m.Header().Type != unix.NLMSG_ERROR || !errors.Is(Errno(m.Payload()), unix.EPERM) {
		t.Fatalf("second message %+v, errno %v", m.Header(), Errno(m.Payload()))
	}
	if m.Next() || m.Err() != nil {
		t.Fatalf("a third message, or err %v", m.Err())
	}
	cut := NewMessages(in[:36])
	n := 0
	for cut.Next() {
		n++
	}
	if n != 1 || !errors.Is(cut.Err(), ErrMalformed) {
		t.Errorf("a message cut short: %d messages, err %v; want the first one, then ErrMalformed", n, cut.Err())
	}
	if err := Errno([]byte{0, 0, 0, 0}); err != nil {
		t.Errorf("an acknowledgement is error %v", err)
	}
	if err := Errno([]byte{1}); !errors.Is(err, ErrMalformed) {
		t.Errorf("a short error message: %v", err)
	}
}

func TestInetAddr(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")
	for _, a := range []netip.Addr{v4, v6} {
		fam := uint16(unix.AF_INET)
		if a.Is6() {
			fam = unix.AF_INET6
		}
		b := AppendInetAddr(nil, a)
		if len(b) != 16 || InetAddr(fam, b) != a {
			t.Errorf("%v: %d bytes, read back %v", a, len(b), InetAddr(fam, b))
		}
	}
	if got := InetAddr(unix.AF_INET6, []byte{1, 2, 3, 4}); got.IsValid() {
		t.Errorf("a 4-byte IPv6 address decodes to %v", got)
	}
}

// Decoding allocates nothing: the hot decoders of conntrack dumps walk
// every attribute of every entry with it.
func TestAttrsDoNotAllocate(t *testing.T) {
	b := Append(nil, 1|unix.NLA_F_NESTED, AppendBE32(AppendBE16(nil, 2, 80), 3, 9))
	n := 0
	if allocs := testing.AllocsPerRun(100, func() {
		for a := NewAttrs(b); a.Next(); {
			for in := NewAttrs(a.Value()); in.Next(); {
				n += int(BE16(in.Value()))
			}
		}
	}); allocs != 0 {
		t.Errorf("%v allocations per walk, want 0", allocs)
	}
}

// FuzzAttrs checks that the iterators never read past their input and stop
// on any byte string.
func FuzzAttrs(f *testing.F) {
	f.Add(AppendString(AppendUint32(nil, 1, 7), 2, "x"))
	f.Add(msg(1, 0, 0, AppendUint16(nil, 1, 2)))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		for a := NewAttrs(b); a.Next(); n++ {
			if len(a.Value()) > len(b) {
				t.Fatalf("value of %d bytes from %d", len(a.Value()), len(b))
			}
		}
		if n > len(b)/AttrHdrLen {
			t.Fatalf("%d attributes from %d bytes", n, len(b))
		}
		m := 0
		for msgs := NewMessages(b); msgs.Next(); m++ {
			if int(msgs.Header().Len) > len(b) {
				t.Fatalf("message of %d bytes from %d", msgs.Header().Len, len(b))
			}
		}
		if m > len(b)/MsgHdrLen {
			t.Fatalf("%d messages from %d bytes", m, len(b))
		}
	})
}
