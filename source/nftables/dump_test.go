package nftables

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source/netlinkattr"
)

// setElementBytes is one NFTA_LIST_ELEM of a set element dump as the
// kernel writes it: a key, a goto verdict, the interval-end flag and a
// comment in the element's userdata.
func setElementBytes() []byte {
	goto32 := int32(unix.NFT_GOTO)
	key := netlinkattr.Append(nil, unix.NFTA_DATA_VALUE, []byte{10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0})
	verdict := netlinkattr.Append(nil, unix.NFTA_VERDICT_CODE, binary.BigEndian.AppendUint32(nil, uint32(goto32)))
	verdict = netlinkattr.AppendString(verdict, unix.NFTA_VERDICT_CHAIN, "service-AAAAAAAA-ns/web/tcp/http")
	data := netlinkattr.Append(nil, unix.NFTA_DATA_VERDICT, verdict)
	b := netlinkattr.Append(nil, nftaSetElemKey, key)
	b = netlinkattr.Append(b, nftaSetElemData, data)
	b = netlinkattr.Append(b, nftaSetElemFlags, binary.BigEndian.AppendUint32(nil, unix.NFT_SET_ELEM_INTERVAL_END))
	return netlinkattr.Append(b, nftaSetElemUserdata, append([]byte{udataSetElemComment, 8}, "ns/web:\x00"...))
}

func TestDecodeSetElement(t *testing.T) {
	b := setElementBytes()
	e, err := decodeSetElement(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0 // the element must not share the dump's buffer
	}
	v, chain := decodeVerdict(e.Val)
	if len(e.Key) != 12 || e.Key[3] != 10 || v != "goto" || chain != "service-AAAAAAAA-ns/web/tcp/http" || !e.IntervalEnd || e.Comment != "ns/web:" {
		t.Errorf("decoded %+v (verdict %q %q)", e, v, chain)
	}
	if _, err := decodeSetElement(b[:len(b)-3]); err == nil {
		t.Error("a truncated element decoded without an error")
	}
}

func FuzzDecodeSetElement(f *testing.F) {
	f.Add(setElementBytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = decodeSetElement(b) // must not panic
	})
}
