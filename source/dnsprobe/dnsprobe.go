// Package dnsprobe sends one DNS query to one server, over UDP or TCP, from
// a network namespace, as `dig <name> @<server>` does: A records through an
// IPv4 server, AAAA through an IPv6 one.
package dnsprobe

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/miekg/dns"

	"github.com/netinspect/netinspect/source/netns"
)

// Answer is what a server answered.
type Answer struct {
	// Rcode is the response code's name as dig prints it (NOERROR,
	// NXDOMAIN...), or its number when unnamed.
	Rcode string
	// OK is set for NOERROR with at least one record.
	OK bool
	// Addrs are the addresses of the answer's A and AAAA records.
	Addrs []netip.Addr
	// Records is the number of records in the answer section.
	Records int
}

// IsDomainName reports whether name can be queried.
func IsDomainName(name string) bool {
	_, ok := dns.IsDomainName(name)
	return ok && name != ""
}

// Query sends one query for name to server over proto ("udp" or "tcp") on a
// fresh socket created in target, bounded by timeout from dial to answer. A
// nil Answer with an error means no answer came (timeout, refused, reset).
func Query(ctx context.Context, target netns.Target, server netip.AddrPort, name, proto string, timeout time.Duration) (*Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var conn net.Conn
	err := target.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, proto, server.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// miekg/dns takes only the deadline from ctx; a cancelled ctx (the
	// exporter stopping) must end the exchange too.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	qtype := dns.TypeA
	if server.Addr().Is6() {
		qtype = dns.TypeAAAA
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: proto, Timeout: timeout}
	resp, _, err := c.ExchangeWithConnContext(ctx, m, &dns.Conn{Conn: conn})
	if err != nil {
		return nil, err
	}
	a := &Answer{Rcode: dns.RcodeToString[resp.Rcode], Records: len(resp.Answer)}
	if a.Rcode == "" {
		a.Rcode = strconv.Itoa(resp.Rcode)
	}
	for _, rr := range resp.Answer {
		switch v := rr.(type) {
		case *dns.A:
			if addr, ok := netip.AddrFromSlice(v.A.To4()); ok {
				a.Addrs = append(a.Addrs, addr)
			}
		case *dns.AAAA:
			if addr, ok := netip.AddrFromSlice(v.AAAA); ok {
				a.Addrs = append(a.Addrs, addr)
			}
		}
	}
	a.OK = resp.Rcode == dns.RcodeSuccess && len(resp.Answer) > 0
	if !a.OK {
		return a, fmt.Errorf("answer with rcode %s and %d records", a.Rcode, len(resp.Answer))
	}
	return a, nil
}
