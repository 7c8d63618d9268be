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
	// kubeletClientCert and kubeletClientKey are the API server's client
	// certificate for the kubelet API (logs, exec), in group system:masters.
	kubeletClientCert, kubeletClientKey string
	ca                                  *testpki.CA
}

// makePKI writes a CA, the API server's serving certificate (for loopback,
// the advertise address and the in-cluster names), an admin client
// certificate (group system:masters), the API server's client certificate
// for the kubelet API and the ServiceAccount signing key.
func makePKI(dir string, advertise net.IP) (*pki, error) {
	ca, err := testpki.NewCA("netinspect-test-ca")
	if err != nil {
		return nil, err
	}
	p := &pki{ca: ca, caPEM: ca.PEM}

	servCert, servKey, err := ca.Issue(&x509.Certificate{
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

	caKeyPEM, err := testpki.KeyPEM(ca.Key)
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

// clientCert issues a client certificate for user cn in groups orgs (the
// API server maps the subject's CommonName and Organizations so).
func (p *pki) clientCert(cn string, orgs ...string) (certPEM, keyPEM []byte, err error) {
	return p.ca.Issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}
