package conntrack

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const testSeq = 7

// nlmsg builds one netlink message.
func nlmsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	l := nlmsgHdrLen + len(payload)
	b := make([]byte, 0, (l+3)&^3)
	b = binary.NativeEndian.AppendUint32(b, uint32(l))
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

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func encodeTuple(ae *netlink.AttributeEncoder, typ uint16, t Tuple) {
	ae.Nested(typ, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
			if t.Src.Is4() {
				ae.Bytes(ctaIPv4Src, t.Src.AsSlice())
				ae.Bytes(ctaIPv4Dst, t.Dst.AsSlice())
			} else {
				ae.Bytes(ctaIPv6Src, t.Src.AsSlice())
				ae.Bytes(ctaIPv6Dst, t.Dst.AsSlice())
			}
			return nil
		})
		ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
			ae.Uint8(ctaProtoNum, t.Proto)
			ae.Bytes(ctaProtoSrcPort, be16(t.SrcPort))
			ae.Bytes(ctaProtoDstPort, be16(t.DstPort))
			return nil
		})
		return nil
	})
}

// entryMsg encodes e as the kernel sends it in a dump.
func entryMsg(t testing.TB, seq uint32, flags uint16, e Entry) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	encodeTuple(ae, ctaTupleOrig, e.Orig)
	encodeTuple(ae, ctaTupleReply, e.Reply)
	ae.Bytes(ctaStatus, binary.BigEndian.AppendUint32(nil, e.Status))
	if e.TCPState != 0 {
		ae.Nested(ctaProtoinfo, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(ctaProtoinfoTCP, func(ae *netlink.AttributeEncoder) error {
				ae.Uint8(ctaProtoinfoTCPState, e.TCPState)
				return nil
			})
			return nil
		})
	}
	if e.Zone != 0 {
		ae.Bytes(ctaZone, be16(e.Zone))
	}
	if e.Timeout != 0 {
		ae.Bytes(ctaTimeout, binary.BigEndian.AppendUint32(nil, e.Timeout))
	}
	if e.Start != 0 {
		ae.Nested(ctaTimestamp, func(ae *netlink.AttributeEncoder) error {
			ae.Bytes(ctaTimestampStart, binary.BigEndian.AppendUint64(nil, e.Start))
			return nil
		})
	}
	attrs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return nlmsg(nfnlSubsysCTNetlink<<8|ipctnlMsgCTNew, flags|unix.NLM_F_MULTI, seq, append([]byte{e.Family, 0, 0, 0}, attrs...))
}

func doneMsg(seq uint32, code int32) []byte {
	return nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, seq, binary.NativeEndian.AppendUint32(nil, uint32(code)))
}

func errMsg(seq uint32, code int32) []byte {
	return nlmsg(unix.NLMSG_ERROR, 0, seq, append(binary.NativeEndian.AppendUint32(nil, uint32(code)), make([]byte, 16)...))
}

var (
	v4Entry = Entry{
		Family: unix.AF_INET,
		Orig:   Tuple{Src: netip.MustParseAddr("10.244.0.5"), Dst: netip.MustParseAddr("10.96.0.1"), SrcPort: 40000, DstPort: 443, Proto: 6},
		Reply:  Tuple{Src: netip.MustParseAddr("10.244.1.7"), Dst: netip.MustParseAddr("10.244.0.5"), SrcPort: 6443, DstPort: 40000, Proto: 6},
		Status: 0x18e, TCPState: 3, Zone: 5, Timeout: 431999,
	}
	v6Entry = Entry{
		Family: unix.AF_INET6,
		Orig:   Tuple{Src: netip.MustParseAddr("fd00::5"), Dst: netip.MustParseAddr("fd00:10:96::a"), SrcPort: 5353, DstPort: 53, Proto: 17},
		Reply:  Tuple{Src: netip.MustParseAddr("fd00::9"), Dst: netip.MustParseAddr("fd00::5"), SrcPort: 53, DstPort: 5353, Proto: 17},
		Status: 0x8, Timeout: 29, Start: 1_767_225_600_123_456_789,
	}
)

func concat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func TestDecodeDatagram(t *testing.T) {
	truncated := entryMsg(t, testSeq, 0, v4Entry)
	// Claim the first attribute is longer than the message.
	binary.NativeEndian.PutUint16(truncated[nlmsgHdrLen+nfgenmsgLen:], 0x4000)
	badAddr := nlmsg(nfnlSubsysCTNetlink<<8, 0, testSeq, []byte{
		unix.AF_INET, 0, 0, 0,
		20, 0, 1, 0x80, // CTA_TUPLE_ORIG, nested
		16, 0, 1, 0x80, // CTA_TUPLE_IP, nested
		9, 0, 1, 0, 1, 2, 3, 4, 5, 0, 0, 0, // CTA_IP_V4_SRC of 5 bytes
	})

	for _, tc := range []struct {
		name        string
		in          []byte
		want        []Entry
		done        bool
		interrupted bool
		err         error
	}{
		{name: "entries then done", in: concat(entryMsg(t, testSeq, 0, v4Entry), entryMsg(t, testSeq, 0, v6Entry), doneMsg(testSeq, 0)),
			want: []Entry{v4Entry, v6Entry}, done: true},
		{name: "no done yet", in: entryMsg(t, testSeq, 0, v6Entry), want: []Entry{v6Entry}},
		{name: "other sequence numbers skipped", in: concat(entryMsg(t, testSeq+1, 0, v4Entry), doneMsg(testSeq+1, 0), entryMsg(t, testSeq, 0, v6Entry)),
			want: []Entry{v6Entry}},
		{name: "dump interrupted", in: entryMsg(t, testSeq, nlmFDumpIntr, v4Entry), want: []Entry{v4Entry}, interrupted: true},
		{name: "request refused", in: errMsg(testSeq, -int32(unix.EPERM)), err: unix.EPERM},
		{name: "acknowledgement ignored", in: concat(errMsg(testSeq, 0), doneMsg(testSeq, 0)), done: true},
		{name: "dump ended with error", in: doneMsg(testSeq, -int32(unix.EINTR)), done: true, err: unix.EINTR},
		{name: "attribute past the end", in: truncated, err: ErrMalformed},
		{name: "IPv4 address of 5 bytes", in: badAddr, err: ErrMalformed},
		{name: "message longer than datagram", in: entryMsg(t, testSeq, 0, v4Entry)[:40], err: ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []Entry
			var e Entry
			b, err := decodeDatagram(tc.in, testSeq, &e, func(e *Entry) { got = append(got, *e) })
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if len(got) != len(tc.want) || b.entries != len(tc.want) {
				t.Fatalf("decoded %d entries (counted %d), want %d: %+v", len(got), b.entries, len(tc.want), got)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("entry %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
			if b.done != tc.done || b.interrupted != tc.interrupted {
				t.Errorf("done, interrupted = %v, %v; want %v, %v", b.done, b.interrupted, tc.done, tc.interrupted)
			}
		})
	}
}

func TestDecodeDatagramDoesNotAllocate(t *testing.T) {
	in := concat(entryMsg(t, testSeq, 0, v4Entry), entryMsg(t, testSeq, 0, v6Entry))
	var e Entry
	n := 0
	fn := func(*Entry) { n++ }
	if allocs := testing.AllocsPerRun(100, func() {
		if _, err := decodeDatagram(in, testSeq, &e, fn); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("decoding allocates %v times per datagram, want 0", allocs)
	}
}

func FuzzDecodeDatagram(f *testing.F) {
	f.Add(concat(entryMsg(f, testSeq, 0, v4Entry), entryMsg(f, testSeq, 0, v6Entry), doneMsg(testSeq, 0)))
	f.Add(errMsg(testSeq, -1))
	f.Fuzz(func(t *testing.T, in []byte) {
		var e Entry
		n := 0
		b, _ := decodeDatagram(in, testSeq, &e, func(*Entry) { n++ })
		if b.entries != n || n > len(in)/nlmsgHdrLen {
			t.Fatalf("counted %d entries, called back %d times, from %d bytes", b.entries, n, len(in))
		}
	})
}

func BenchmarkDecodeDatagram(b *testing.B) {
	var in []byte
	for range 100 {
		in = append(in, entryMsg(b, testSeq, 0, v4Entry)...)
	}
	var e Entry
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeDatagram(in, testSeq, &e, func(*Entry) {}); err != nil {
			b.Fatal(err)
		}
	}
}
