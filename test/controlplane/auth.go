package controlplane

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
)

// serviceAccountIssuer is the API server's --service-account-issuer, which
// is also its default --api-audiences.
const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// SignServiceAccountToken returns a token for the ServiceAccount (which must
// exist), signed with the API server's signing key and carrying the claims
// of a TokenRequest token, valid from issued to expires. Unlike the
// TokenRequest API it can make tokens that have already expired (the API
// server accepts a token up to a minute past its expiry: jwt.DefaultLeeway).
func (cp *ControlPlane) SignServiceAccountToken(t testing.TB, namespace, name string, issued, expires time.Time) string {
	t.Helper()
	ctx, cancel := cp.ctx()
	defer cancel()
	sa, err := cp.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get ServiceAccount %s/%s: %v", namespace, name, err)
	}
	b, err := os.ReadFile(cp.pki.saPrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM block", cp.pki.saPrivateKey)
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("parse %s: %v", cp.pki.saPrivateKey, err)
	}
	claims := map[string]any{
		"iss": serviceAccountIssuer,
		"aud": []string{serviceAccountIssuer},
		"sub": "system:serviceaccount:" + namespace + ":" + name,
		"iat": issued.Unix(),
		"nbf": issued.Unix(),
		"exp": expires.Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      namespace,
			"serviceaccount": map[string]string{"name": name, "uid": string(sa.UID)},
		},
	}
	token, err := signES256(key, claims)
	if err != nil {
		t.Fatalf("sign token for %s/%s: %v", namespace, name, err)
	}
	return token
}

// signES256 makes a compact JWS (RFC 7515) of claims with ES256 (RFC 7518
// section 3.4: the signature is r and s, 32 bytes each).
func signES256(key *ecdsa.PrivateKey, claims any) (string, error) {
	header, err := json.Marshal(map[string]string{"alg": "ES256", "typ": "JWT"})
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signingInput := enc.EncodeToString(header) + "." + enc.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signingInput))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signingInput + "." + enc.EncodeToString(sig), nil
}

// CreateObjects creates the objects of a multi-document manifest file:
// Namespaces, ServiceAccounts (their namespace is created if missing),
// ClusterRoles and ClusterRoleBindings, the kinds of deploy/rbac.yaml.
func (cp *ControlPlane) CreateObjects(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := cp.ctx()
	defer cancel()
	for _, doc := range strings.Split(string(b), "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("decode %s: %v", path, err)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			cp.EnsureNamespace(t, o.Name)
		case *corev1.ServiceAccount:
			cp.EnsureNamespace(t, o.Namespace)
			_, err = cp.Client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = cp.Client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = cp.Client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("%s: CreateObjects does not know %T", path, obj)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create objects of %s: %v", path, err)
		}
	}
}

// GrantNonResourceURL lets a ServiceAccount use verb on a non-resource URL
// (the ClusterRole kube-prometheus gives Prometheus for /metrics) through a
// ClusterRole and a ClusterRoleBinding, both named name. It returns a
// function that deletes the binding, revoking the right.
func (cp *ControlPlane) GrantNonResourceURL(t testing.TB, name, namespace, serviceAccount, url, verb string) (revoke func()) {
	t.Helper()
	ctx, cancel := cp.ctx()
	defer cancel()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{{NonResourceURLs: []string{url}, Verbs: []string{verb}}},
	}
	if _, err := cp.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create ClusterRole %s: %v", name, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: serviceAccount}},
	}
	if _, err := cp.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ClusterRoleBinding %s: %v", name, err)
	}
	return func() {
		t.Helper()
		ctx, cancel := cp.ctx()
		defer cancel()
		if err := cp.Client.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete ClusterRoleBinding %s: %v", name, err)
		}
	}
}

// ServiceAccountToken returns a fresh TokenRequest token (one hour) for the
// ServiceAccount, creating it and its namespace if missing.
func (cp *ControlPlane) ServiceAccountToken(t testing.TB, namespace, name string) string {
	t.Helper()
	cfg, _ := cp.ServiceAccountConfig(t, namespace, name)
	return cfg.BearerToken
}

// IssueServingCertificate returns a server certificate and key for hosts
// (DNS names or IPs) signed by the cluster's CA, as cert-manager with a
// cluster issuer would make for a Secret; CAFile verifies it.
func (cp *ControlPlane) IssueServingCertificate(t testing.TB, cn string, hosts ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := cp.pki.ca.IssueServing(cn, hosts...)
	if err != nil {
		t.Fatalf("issue serving certificate for %v: %v", hosts, err)
	}
	return certPEM, keyPEM
}
