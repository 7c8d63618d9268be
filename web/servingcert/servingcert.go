// Package servingcert provides the certificate the exporter serves TLS
// with: from PEM files, typically a kubernetes.io/tls Secret mounted as a
// volume, read again when they change so a rotated Secret is served without
// a restart; or, when no files are given, a self-signed one made at
// start-up, as kube-rbac-proxy does, and renewed in memory before it
// expires.
//
// Files are looked at on a TLS handshake, at most once per
// Config.CheckInterval, by one handshake at a time; the others go on with
// the current certificate. A change that does not load (a half-written
// pair, a key that does not match) keeps the last good certificate, is
// logged once and counted in netinspect_tls_certificate_reload_errors_total.
package servingcert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Defaults of the Config fields left zero.
const (
	DefaultCheckInterval = time.Second
	DefaultValidity      = 365 * 24 * time.Hour
)

// Config configures a Source. With CertFile and KeyFile the certificate
// comes from them; with neither it is self-signed.
type Config struct {
	CertFile, KeyFile string
	// Hosts are the DNS names and IP addresses of a self-signed
	// certificate.
	Hosts []string
	// Validity of a self-signed certificate (default DefaultValidity); a
	// new one is made once two thirds of it have passed.
	Validity time.Duration
	// CheckInterval is how often, at most, the files are looked at (default
	// DefaultCheckInterval).
	CheckInterval time.Duration
	Logger        *zap.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Source hands out the current certificate. It implements
// prometheus.Collector for its metrics.
type Source struct {
	cfg      Config
	current  atomic.Pointer[loaded]
	checked  atomic.Int64 // UnixNano of the last look at the files
	checking sync.Mutex
	// lastFailure is the last refused change (error and contents), so a
	// change is logged and counted once however often it is looked at.
	lastFailure string

	reloadErrors prometheus.Counter
	expiryDesc   *prometheus.Desc
}

type loaded struct {
	cert                *tls.Certificate
	certPEM, keyPEM     []byte
	notBefore, notAfter time.Time
	selfSigned          bool
}

// New returns a Source with its first certificate: read from the files
// (an error says which file and why), or self-signed.
func New(cfg Config) (*Source, error) {
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("a certificate file needs its key file and a key file its certificate file")
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.Validity <= 0 {
		cfg.Validity = DefaultValidity
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Source{
		cfg: cfg,
		reloadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "netinspect_tls_certificate_reload_errors_total",
			Help: "Changes of the serving certificate files that could not be loaded (unreadable, not PEM, key not matching); the last good certificate is served meanwhile.",
		}),
		expiryDesc: prometheus.NewDesc("netinspect_tls_certificate_expiry_timestamp_seconds",
			"NotAfter of the certificate being served, in seconds since the epoch.", nil, nil),
	}
	var l *loaded
	var err error
	if cfg.CertFile != "" {
		l, err = s.readFiles()
	} else {
		l, err = s.selfSign()
	}
	if err != nil {
		return nil, err
	}
	s.current.Store(l)
	s.checked.Store(cfg.Now().UnixNano())
	s.logServing("serving TLS", l)
	return s, nil
}

// TLSConfig returns a server configuration that serves the Source's
// current certificate, TLS 1.2 or later, HTTP/1.1 only (as exporter-toolkit
// does by default).
func (s *Source) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
		GetCertificate: s.GetCertificate,
	}
}

// GetCertificate is tls.Config.GetCertificate.
func (s *Source) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.refresh()
	return s.current.Load().cert, nil
}

// Certificate returns the certificate being served.
func (s *Source) Certificate() *tls.Certificate { return s.current.Load().cert }

func (s *Source) refresh() {
	now := s.cfg.Now()
	if now.Sub(time.Unix(0, s.checked.Load())) < s.cfg.CheckInterval || !s.checking.TryLock() {
		return
	}
	defer s.checking.Unlock()
	s.checked.Store(now.UnixNano())
	cur := s.current.Load()
	if cur.selfSigned {
		if now.Before(cur.notBefore.Add(s.cfg.Validity * 2 / 3)) {
			return
		}
		l, err := s.selfSign()
		if err != nil {
			s.refused(err, nil, nil)
			return
		}
		s.current.Store(l)
		s.logServing("renewed the self-signed certificate", l)
		return
	}
	certPEM, keyPEM, err := s.readPEM()
	if err == nil && bytes.Equal(certPEM, cur.certPEM) && bytes.Equal(keyPEM, cur.keyPEM) {
		s.lastFailure = ""
		return
	}
	var l *loaded
	if err == nil {
		l, err = s.parse(certPEM, keyPEM)
	}
	if err != nil {
		s.refused(err, certPEM, keyPEM)
		return
	}
	s.lastFailure = ""
	s.current.Store(l)
	s.logServing("reloaded the serving certificate", l)
}

// refused logs and counts a change that could not be loaded, once.
func (s *Source) refused(err error, certPEM, keyPEM []byte) {
	key := err.Error() + "\x00" + string(certPEM) + "\x00" + string(keyPEM)
	if key == s.lastFailure {
		return
	}
	s.lastFailure = key
	s.reloadErrors.Inc()
	s.cfg.Logger.Warn("serving certificate not reloaded; still serving the previous one", zap.Error(err),
		zap.Time("previous_not_after", s.current.Load().notAfter))
}

func (s *Source) readPEM() (certPEM, keyPEM []byte, err error) {
	certPEM, err = os.ReadFile(s.cfg.CertFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err = os.ReadFile(s.cfg.KeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read key: %w", err)
	}
	return certPEM, keyPEM, nil
}

func (s *Source) readFiles() (*loaded, error) {
	certPEM, keyPEM, err := s.readPEM()
	if err != nil {
		return nil, err
	}
	return s.parse(certPEM, keyPEM)
}

func (s *Source) parse(certPEM, keyPEM []byte) (*loaded, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load key pair %s, %s: %w", s.cfg.CertFile, s.cfg.KeyFile, err)
	}
	leaf := cert.Leaf // set by X509KeyPair since Go 1.23
	return &loaded{cert: &cert, certPEM: certPEM, keyPEM: keyPEM, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}, nil
}

func (s *Source) selfSign() (*loaded, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	now := s.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "netinspect"},
		// An hour back, for clients whose clock is a little behind.
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(s.cfg.Validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range s.cfg.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create self-signed certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse self-signed certificate: %w", err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	return &loaded{cert: cert, notBefore: now, notAfter: leaf.NotAfter, selfSigned: true}, nil
}

func (s *Source) logServing(msg string, l *loaded) {
	leaf := l.cert.Leaf
	fields := []zap.Field{zap.Bool("self_signed", l.selfSigned), zap.String("subject", leaf.Subject.String()),
		zap.Strings("dns_names", leaf.DNSNames), zap.Time("not_after", leaf.NotAfter), zap.String("serial", leaf.SerialNumber.Text(16))}
	if !l.selfSigned {
		fields = append(fields, zap.String("cert_file", s.cfg.CertFile))
	}
	s.cfg.Logger.Info(msg, fields...)
	if s.cfg.Now().After(leaf.NotAfter) {
		s.cfg.Logger.Warn("the serving certificate has expired; clients that verify it refuse to connect", fields...)
	}
}

// Describe implements prometheus.Collector.
func (s *Source) Describe(ch chan<- *prometheus.Desc) {
	s.reloadErrors.Describe(ch)
	ch <- s.expiryDesc
}

// Collect implements prometheus.Collector.
func (s *Source) Collect(ch chan<- prometheus.Metric) {
	s.reloadErrors.Collect(ch)
	ch <- prometheus.MustNewConstMetric(s.expiryDesc, prometheus.GaugeValue, float64(s.current.Load().notAfter.Unix()))
}
