package collector

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// IPVS generic netlink interface (include/uapi/linux/ip_vs.h). Read here
// directly rather than through moby/ipvs, whose New runs `modprobe -va ip_vs`
// (netlink_linux.go, v1.1.0) and caches the family ID in a package global on
// first use: the exporter must never load a kernel module.
const (
	ipvsGenlName    = "IPVS"
	ipvsGenlVersion = 1

	ipvsCmdGetService = 4
	ipvsCmdGetDest    = 8

	ipvsCmdAttrService = 1
	ipvsCmdAttrDest    = 2

	ipvsSvcAttrAF        = 1
	ipvsSvcAttrProtocol  = 2
	ipvsSvcAttrAddr      = 3
	ipvsSvcAttrPort      = 4
	ipvsSvcAttrFWMark    = 5
	ipvsSvcAttrSchedName = 6
	ipvsSvcAttrFlags     = 7
	ipvsSvcAttrTimeout   = 8
	ipvsSvcAttrStats     = 10
	ipvsSvcAttrStats64   = 12

	ipvsDestAttrAddr         = 1
	ipvsDestAttrPort         = 2
	ipvsDestAttrFwdMethod    = 3
	ipvsDestAttrWeight       = 4
	ipvsDestAttrActiveConns  = 7
	ipvsDestAttrInactConns   = 8
	ipvsDestAttrPersistConns = 9
	ipvsDestAttrStats        = 10
	ipvsDestAttrAddrFamily   = 11
	ipvsDestAttrStats64      = 12

	ipvsStatsAttrConns    = 1
	ipvsStatsAttrInPkts   = 2
	ipvsStatsAttrOutPkts  = 3
	ipvsStatsAttrInBytes  = 4
	ipvsStatsAttrOutBytes = 5
)

// ipvsStats are the cumulative counters of a virtual server or a backend.
type ipvsStats struct {
	Conns, InPkts, OutPkts, InBytes, OutBytes uint64
}

// ipvsService is one IPVS virtual server.
type ipvsService struct {
	Family   uint16 // unix.AF_INET or AF_INET6
	Protocol uint16 // IP protocol number; 0 for fwmark services
	Addr     netip.Addr
	Port     uint16
	FWMark   uint32
	Sched    string
	Flags    uint32
	Timeout  uint32 // persistence timeout in seconds
	Stats    ipvsStats
}

// ipvsDest is one backend (real server) of a virtual server.
type ipvsDest struct {
	Addr                      netip.Addr
	Port                      uint16
	FwdMethod                 uint32
	Weight                    uint32
	Active, Inactive, Persist uint32
	Stats                     ipvsStats
}

// ipvsReader holds one generic netlink connection for one reading.
type ipvsReader struct {
	conn   *genetlink.Conn
	family uint16
}

// errIPVSAbsent says the kernel has no IPVS generic netlink family.
var errIPVSAbsent = errors.New("IPVS generic netlink family absent (ip_vs not loaded)")

// dialIPVS opens a generic netlink connection in netns (0: the caller's)
// and resolves the IPVS family. The deadline of ctx bounds every call.
func dialIPVS(ctx context.Context, netns int) (*ipvsReader, error) {
	// A pooled receive buffer saves the MSG_PEEK recvmsg mdlayher/netlink
	// otherwise makes to size each datagram: one syscall of the five per
	// virtual server. Kernel dump datagrams stay under 32 KiB.
	conn, err := genetlink.Dial(&netlink.Config{NetNS: netns, MessageBufferSize: 64 * 1024})
	if err != nil {
		return nil, fmt.Errorf("dial generic netlink: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			conn.Close()
			return nil, fmt.Errorf("set netlink deadline: %w", err)
		}
	}
	fam, err := conn.GetFamily(ipvsGenlName)
	if err != nil {
		conn.Close()
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
			return nil, errIPVSAbsent
		}
		return nil, fmt.Errorf("resolve generic netlink family %s: %w", ipvsGenlName, err)
	}
	return &ipvsReader{conn: conn, family: fam.ID}, nil
}

func (r *ipvsReader) Close() error { return r.conn.Close() }

// Services dumps every virtual server.
func (r *ipvsReader) Services() ([]ipvsService, error) {
	msgs, err := r.conn.Execute(genetlink.Message{
		Header: genetlink.Header{Command: ipvsCmdGetService, Version: ipvsGenlVersion},
	}, r.family, netlink.Request|netlink.Dump)
	if err != nil {
		return nil, fmt.Errorf("dump IPVS services: %w", err)
	}
	out := make([]ipvsService, 0, len(msgs))
	for _, m := range msgs {
		var svc ipvsService
		err := walkAttrs(m.Data, func(typ uint16, b []byte) error {
			if typ != ipvsCmdAttrService {
				return nil
			}
			return walkAttrs(b, svc.decodeAttr)
		})
		if err != nil {
			return nil, fmt.Errorf("decode IPVS service: %w", err)
		}
		out = append(out, svc)
	}
	return out, nil
}

// Dests dumps the backends of one virtual server. The kernel has no dump of
// all backends at once: IPVS_CMD_GET_DEST needs the service (ipvsadm -Ln
// asks once per service too).
func (r *ipvsReader) Dests(svc *ipvsService, buf []ipvsDest) ([]ipvsDest, error) {
	attrs := svc.identity()
	msgs, err := r.conn.Execute(genetlink.Message{
		Header: genetlink.Header{Command: ipvsCmdGetDest, Version: ipvsGenlVersion},
		Data:   attrs,
	}, r.family, netlink.Request|netlink.Dump)
	if err != nil {
		return buf, fmt.Errorf("dump IPVS backends of %s: %w", svc, err)
	}
	for _, m := range msgs {
		d := ipvsDest{}
		family := svc.Family
		err := walkAttrs(m.Data, func(typ uint16, b []byte) error {
			if typ != ipvsCmdAttrDest {
				return nil
			}
			// IPVS_DEST_ATTR_ADDR_FAMILY (kernel 4.x+) comes after the
			// address, so the address is decoded once the family is known.
			var rawAddr []byte
			if err := walkAttrs(b, func(typ uint16, b []byte) error {
				switch typ {
				case ipvsDestAttrAddr:
					rawAddr = b
				case ipvsDestAttrAddrFamily:
					if len(b) >= 2 {
						family = binary.NativeEndian.Uint16(b)
					}
				default:
					d.decodeAttr(typ, b)
				}
				return nil
			}); err != nil {
				return err
			}
			d.Addr = decodeInetAddr(family, rawAddr)
			return nil
		})
		if err != nil {
			return buf, fmt.Errorf("decode IPVS backend of %s: %w", svc, err)
		}
		buf = append(buf, d)
	}
	return buf, nil
}

func (s *ipvsService) String() string {
	if s.FWMark != 0 {
		return fmt.Sprintf("fwmark %d", s.FWMark)
	}
	return fmt.Sprintf("%s %s", ipProtocolName(s.Protocol), netip.AddrPortFrom(s.Addr, s.Port))
}

// identity encodes the attributes that name the service in a request:
// the family and either the fwmark or protocol, address and port.
func (s *ipvsService) identity() []byte {
	inner := make([]byte, 0, 48)
	inner = appendAttr(inner, ipvsSvcAttrAF, binary.NativeEndian.AppendUint16(nil, s.Family))
	if s.FWMark != 0 {
		inner = appendAttr(inner, ipvsSvcAttrFWMark, binary.NativeEndian.AppendUint32(nil, s.FWMark))
	} else {
		inner = appendAttr(inner, ipvsSvcAttrProtocol, binary.NativeEndian.AppendUint16(nil, s.Protocol))
		addr := make([]byte, 16) // union nf_inet_addr
		if s.Addr.Is4() {
			a := s.Addr.As4()
			copy(addr, a[:])
		} else {
			a := s.Addr.As16()
			copy(addr, a[:])
		}
		inner = appendAttr(inner, ipvsSvcAttrAddr, addr)
		inner = appendAttr(inner, ipvsSvcAttrPort, binary.BigEndian.AppendUint16(nil, s.Port))
	}
	return appendAttr(nil, ipvsCmdAttrService|netlink.Nested, inner)
}

func (s *ipvsService) decodeAttr(typ uint16, b []byte) error {
	switch typ {
	case ipvsSvcAttrAF:
		s.Family = u16(b)
	case ipvsSvcAttrProtocol:
		s.Protocol = u16(b)
	case ipvsSvcAttrAddr:
		// The family attribute comes first (ip_vs_genl_fill_service).
		s.Addr = decodeInetAddr(s.Family, b)
	case ipvsSvcAttrPort:
		if len(b) >= 2 {
			s.Port = binary.BigEndian.Uint16(b)
		}
	case ipvsSvcAttrFWMark:
		s.FWMark = u32(b)
	case ipvsSvcAttrSchedName:
		s.Sched = cString(b)
	case ipvsSvcAttrFlags:
		s.Flags = u32(b) // struct ip_vs_flags{flags, mask}
	case ipvsSvcAttrTimeout:
		s.Timeout = u32(b)
	case ipvsSvcAttrStats:
		if s.Stats == (ipvsStats{}) {
			return walkAttrs(b, s.Stats.decode32)
		}
	case ipvsSvcAttrStats64:
		return walkAttrs(b, s.Stats.decode64)
	}
	return nil
}

func (d *ipvsDest) decodeAttr(typ uint16, b []byte) {
	switch typ {
	case ipvsDestAttrPort:
		if len(b) >= 2 {
			d.Port = binary.BigEndian.Uint16(b)
		}
	case ipvsDestAttrFwdMethod:
		d.FwdMethod = u32(b)
	case ipvsDestAttrWeight:
		d.Weight = u32(b)
	case ipvsDestAttrActiveConns:
		d.Active = u32(b)
	case ipvsDestAttrInactConns:
		d.Inactive = u32(b)
	case ipvsDestAttrPersistConns:
		d.Persist = u32(b)
	case ipvsDestAttrStats:
		if d.Stats == (ipvsStats{}) {
			_ = walkAttrs(b, d.Stats.decode32)
		}
	case ipvsDestAttrStats64:
		d.Stats = ipvsStats{}
		_ = walkAttrs(b, d.Stats.decode64)
	}
}

// decode32 reads IPVS_SVC_ATTR_STATS: connections and packets are u32
// there, bytes u64. STATS64 (kernel 4.1+) is preferred when present.
func (s *ipvsStats) decode32(typ uint16, b []byte) error {
	switch typ {
	case ipvsStatsAttrConns:
		s.Conns = uint64(u32(b))
	case ipvsStatsAttrInPkts:
		s.InPkts = uint64(u32(b))
	case ipvsStatsAttrOutPkts:
		s.OutPkts = uint64(u32(b))
	case ipvsStatsAttrInBytes:
		s.InBytes = u64(b)
	case ipvsStatsAttrOutBytes:
		s.OutBytes = u64(b)
	}
	return nil
}

func (s *ipvsStats) decode64(typ uint16, b []byte) error {
	switch typ {
	case ipvsStatsAttrConns:
		s.Conns = u64(b)
	case ipvsStatsAttrInPkts:
		s.InPkts = u64(b)
	case ipvsStatsAttrOutPkts:
		s.OutPkts = u64(b)
	case ipvsStatsAttrInBytes:
		s.InBytes = u64(b)
	case ipvsStatsAttrOutBytes:
		s.OutBytes = u64(b)
	}
	return nil
}

// walkAttrs calls fn for each netlink attribute in b, without allocating.
func walkAttrs(b []byte, fn func(typ uint16, data []byte) error) error {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ (netlink.Nested | netlink.NetByteOrder)
		if l < 4 || l > len(b) {
			return fmt.Errorf("netlink attribute length %d out of range (%d bytes left)", l, len(b))
		}
		if err := fn(typ, b[4:l]); err != nil {
			return err
		}
		al := (l + 3) &^ 3
		if al >= len(b) {
			break
		}
		b = b[al:]
	}
	return nil
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := 4 + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for i := l; i%4 != 0; i++ {
		b = append(b, 0)
	}
	return b
}

func decodeInetAddr(family uint16, b []byte) netip.Addr {
	switch {
	case family == unix.AF_INET && len(b) >= 4:
		return netip.AddrFrom4([4]byte(b[:4]))
	case family == unix.AF_INET6 && len(b) >= 16:
		return netip.AddrFrom16([16]byte(b[:16]))
	}
	return netip.Addr{}
}

func u16(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.NativeEndian.Uint16(b)
}

func u32(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binary.NativeEndian.Uint32(b)
}

func u64(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.NativeEndian.Uint64(b)
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// ipProtocolName is the lower-case name of an IP protocol number.
func ipProtocolName(p uint16) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return fmt.Sprintf("%d", p)
}
