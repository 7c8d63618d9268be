package neighbour

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// tblMessage encodes the payload of an RTM_NEWNEIGHTBL message as the
// kernel's neightbl_fill_info does (Linux 6.18), with statsFields counters.
func tblMessage(t testing.TB, family byte, name string, entries uint32, statsFields int) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.String(ndtaName, name)
	ae.Bytes(9, nil) // NDTA_PAD before the 64-bit attribute
	ae.Uint64(ndtaGCInterval, 30000)
	ae.Uint32(ndtaThresh1, 128)
	ae.Uint32(ndtaThresh2, 512)
	ae.Uint32(ndtaThresh3, 1024)
	cfg := make([]byte, 32) // struct ndt_config
	binary.NativeEndian.PutUint16(cfg[0:], 4)
	binary.NativeEndian.PutUint16(cfg[2:], 336)
	binary.NativeEndian.PutUint32(cfg[4:], entries)
	binary.NativeEndian.PutUint32(cfg[8:], 123456) // last_flush
	ae.Bytes(ndtaConfig, cfg)
	stats := make([]byte, 8*statsFields)
	for i := range statsFields {
		binary.NativeEndian.PutUint64(stats[8*i:], uint64(1000+i))
	}
	ae.Bytes(ndtaStats, stats)
	ae.Nested(6, func(nae *netlink.AttributeEncoder) error { // NDTA_PARMS of the default parameters
		nae.Uint32(2, 1)      // NDTPA_REFCNT
		nae.Uint64(3, 30000)  // NDTPA_REACHABLE_TIME
		nae.Uint32(8, 101)    // NDTPA_QUEUE_LEN
		nae.Uint64(15, 1000)  // NDTPA_LOCKTIME
		nae.Uint32(17, 65536) // NDTPA_QUEUE_LENBYTES
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{family, 0, 0, 0}, b...)
}

// deviceMessage encodes the per-device message that follows a table's.
func deviceMessage(t testing.TB, family byte, name string, ifindex uint32) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.String(ndtaName, name)
	ae.Nested(6, func(nae *netlink.AttributeEncoder) error {
		nae.Uint32(1, ifindex) // NDTPA_IFINDEX
		nae.Uint32(2, 2)
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{family, 0, 0, 0}, b...)
}

func TestParseNeighTblDecodesATableMessage(t *testing.T) {
	for _, c := range []struct {
		family     byte
		name, want string
	}{
		{unix.AF_INET, "arp_cache", FamilyIPv4},
		{unix.AF_INET6, "ndisc_cache", FamilyIPv6},
	} {
		got, ok, err := ParseNeighTbl(tblMessage(t, c.family, c.name, 7, ndtStatsFields))
		if err != nil || !ok {
			t.Fatalf("%s: ok=%v err=%v", c.name, ok, err)
		}
		want := Table{
			Family: c.want, Name: c.name, Entries: 7, GCThresh1: 128, GCThresh2: 512, GCThresh3: 1024,
			GCInterval: 30 * time.Second, Source: SourceNetlink,
			Stats: Stats{Allocs: 1000, Destroys: 1001, HashGrows: 1002, ResFailed: 1003, Lookups: 1004, Hits: 1005,
				RcvProbesMcast: 1006, RcvProbesUcast: 1007, PeriodicGCRuns: 1008, ForcedGCRuns: 1009,
				TableFulls: 1010, HasTableFulls: true},
		}
		if got != want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, want)
		}
	}
}

func TestParseNeighTblSkipsDeviceAndForeignFamilyMessages(t *testing.T) {
	for name, b := range map[string][]byte{
		"device parameters":   deviceMessage(t, unix.AF_INET, "arp_cache", 2),
		"a DECnet-era family": tblMessage(t, 12, "dn_neigh_cache", 3, ndtStatsFields),
	} {
		if got, ok, err := ParseNeighTbl(b); err != nil || ok {
			t.Errorf("%s: got %+v ok=%v err=%v, want skipped", name, got, ok, err)
		}
	}
}

func TestParseNeighTblWithoutTableFulls(t *testing.T) {
	got, ok, err := ParseNeighTbl(tblMessage(t, unix.AF_INET, "arp_cache", 1, ndtStatsMinFields))
	if err != nil || !ok {
		t.Fatalf("ok=%v err=%v", ok, err)
	}
	if got.Stats.HasTableFulls || got.Stats.TableFulls != 0 || got.Stats.ForcedGCRuns != 1009 {
		t.Errorf("stats %+v", got.Stats)
	}
}

func TestParseNeighTblRejectsMalformedMessages(t *testing.T) {
	good := tblMessage(t, unix.AF_INET, "arp_cache", 1, ndtStatsFields)
	withAttr := func(typ uint16, v []byte) []byte {
		ae := netlink.NewAttributeEncoder()
		ae.Bytes(typ, v)
		b, _ := ae.Encode()
		return append([]byte{unix.AF_INET, 0, 0, 0}, b...)
	}
	for name, b := range map[string][]byte{
		"shorter than ndtmsg":     {unix.AF_INET, 0},
		"truncated attribute":     good[:len(good)-3],
		"attribute length beyond": append([]byte{unix.AF_INET, 0, 0, 0}, 0xff, 0x00, 0x01, 0x00, 1, 2),
		"short NDTA_CONFIG":       withAttr(ndtaConfig, make([]byte, 6)),
		"short NDTA_STATS":        withAttr(ndtaStats, make([]byte, 79)),
		"two-byte threshold":      withAttr(ndtaThresh3, make([]byte, 2)),
		"four-byte gc interval":   withAttr(ndtaGCInterval, make([]byte, 4)),
	} {
		if _, _, err := ParseNeighTbl(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func FuzzParseNeighTbl(f *testing.F) {
	f.Add(tblMessage(f, unix.AF_INET, "arp_cache", 7, ndtStatsFields))
	f.Add(tblMessage(f, unix.AF_INET6, "ndisc_cache", 0, ndtStatsMinFields))
	f.Add(deviceMessage(f, unix.AF_INET, "arp_cache", 3))
	f.Add([]byte{unix.AF_INET, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		tbl, ok, err := ParseNeighTbl(b)
		switch {
		case err != nil:
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			if ok || tbl != (Table{}) {
				t.Fatalf("an error with a table: %+v", tbl)
			}
		case ok:
			if tbl.Family != FamilyIPv4 && tbl.Family != FamilyIPv6 || tbl.Source != SourceNetlink {
				t.Fatalf("table of family %q source %q", tbl.Family, tbl.Source)
			}
			if tbl.Entries > 1<<32-1 || tbl.GCThresh3 > 1<<32-1 {
				t.Fatalf("a 32-bit field decoded as %d", tbl.Entries)
			}
		default:
			if tbl != (Table{}) {
				t.Fatalf("a skipped message with a table: %+v", tbl)
			}
		}
	})
}
