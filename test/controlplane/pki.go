package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the files the control plane is started with.
type pki struct {
	caFile, caKey             string
	caPEM                     []byte
	servingCert, servingKey   string
	adminCertPEM, adminKeyPEM []byte
	saPublicKey, saPrivateKey string
	// kubeletClientCert and kubeletClientKey are the API server's client
	// certificate for the kubelet API (logs, exec), in group system:masters.
	kubeletClientCert, kubeletClientKey string
	caCert                              *x509.Certificate
	caSigner                            crypto.Signer
	serial                              int64
	notBefore                           time.Time
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// makePKI writes a CA, the API server's serving certificate (for loopback,
// the advertise address and the in-cluster names), an admin client
// certificate (group system:masters) and the ServiceAccount signing key.
func makePKI(dir string, advertise net.IP) (*pki, error) {
	p := &pki{serial: 1, notBefore: time.Now().Add(-time.Hour)}
	now := p.notBefore

	caKey, err := newKey()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "netinspect-test-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	p.caCert, _ = x509.ParseCertificate(caDER)
	p.caSigner = caKey
	p.caPEM = certPEM(caDER)

	servCert, servKey, err := p.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), advertise, net.ParseIP(firstServiceIP)},
	})
	if err != nil {
		return nil, fmt.Errorf("issue serving certificate: %w", err)
	}
	p.adminCertPEM, p.adminKeyPEM, err = p.clientCert("netinspect-test-admin", "system:masters")
	if err != nil {
		return nil, fmt.Errorf("issue admin certificate: %w", err)
	}
	kubeletClientCert, kubeletClientKey, err := p.clientCert("kube-apiserver-kubelet-client", "system:masters")
	if err != nil {
		return nil, fmt.Errorf("issue kubelet client certificate: %w", err)
	}

	saKey, err := newKey()
	if err != nil {
		return nil, err
	}
	saKeyPEM, err := keyPEM(saKey)
	if err != nil {
		return nil, err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}

	caKeyPEM, err := keyPEM(caKey)
	if err != nil {
		return nil, err
	}
	files := []struct {
		dst  *string
		name string
		data []byte
	}{
		{&p.caFile, "ca.crt", p.caPEM},
		{&p.caKey, "ca.key", caKeyPEM},
		{&p.servingCert, "apiserver.crt", servCert},
		{&p.servingKey, "apiserver.key", servKey},
		{&p.saPrivateKey, "sa.key", saKeyPEM},
		{&p.saPublicKey, "sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER})},
		{&p.kubeletClientCert, "apiserver-kubelet-client.crt", kubeletClientCert},
		{&p.kubeletClientKey, "apiserver-kubelet-client.key", kubeletClientKey},
	}
	for _, f := range files {
		*f.dst = filepath.Join(dir, f.name)
		if err := os.WriteFile(*f.dst, f.data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// issue signs a certificate for tmpl (subject, usages, names) with the CA and
// returns it and its new key, PEM encoded.
func (p *pki) issue(tmpl *x509.Certificate) (certPEMBytes, keyPEMBytes []byte, err error) {
	k, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	p.serial++
	tmpl.SerialNumber = big.NewInt(p.serial)
	tmpl.NotBefore, tmpl.NotAfter = p.notBefore, p.notBefore.Add(48*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &k.PublicKey, p.caSigner)
	if err != nil {
		return nil, nil, err
	}
	kp, err := keyPEM(k)
	return certPEM(der), kp, err
}

// clientCert issues a client certificate for user cn in groups orgs (the
// API server maps the subject's CommonName and Organizations so).
func (p *pki) clientCert(cn string, orgs ...string) (certPEMBytes, keyPEMBytes []byte, err error) {
	return p.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}
