package controlplane

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"

	testpki "github.com/netinspect/netinspect/test/pki"
)

// pki holds the files the control plane is started with.
type pki struct {
	caFile, caKey             string
	caPEM                     []byte
	servingCert, servingKey   string
	adminCertPEM, adminKeyPEM []byte
	saPublicKey, saPrivateKey string
	ca                        *testpki.CA
}

// makePKI writes a CA, the API server's serving certificate (for loopback,
// the advertise address and the in-cluster names), an admin client
// certificate (group system:masters) and the ServiceAccount signing key.
func makePKI(dir string, advertise net.IP) (*pki, error) {
	p := &pki{}
	ca, err := testpki.NewCA("netinspect-test-ca")
	if err != nil {
		return nil, err
	}
	p.ca = ca
	p.caPEM = ca.PEM
	issue := ca.Issue
	caKey := ca.Key

	servCert, servKey, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), advertise, net.ParseIP(firstServiceIP)},
	})
	if err != nil {
		return nil, fmt.Errorf("issue serving certificate: %w", err)
	}
	p.adminCertPEM, p.adminKeyPEM, err = issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "netinspect-test-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("issue admin certificate: %w", err)
	}

	saKey, err := testpki.NewKey()
	if err != nil {
		return nil, err
	}
	saKeyPEM, err := testpki.KeyPEM(saKey)
	if err != nil {
		return nil, err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}

	caKeyPEM, err := testpki.KeyPEM(caKey)
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
	}
	for _, f := range files {
		*f.dst = filepath.Join(dir, f.name)
		if err := os.WriteFile(*f.dst, f.data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}
