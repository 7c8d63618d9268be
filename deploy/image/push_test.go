package image

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// registry is a CNCF distribution registry (Debian's docker-registry) on
// loopback inside a test network namespace.
type registry struct {
	ns   *netns.NS
	addr string // host:port
}

// registryOptions shape the registry's config: readOnly refuses every
// write (storage.maintenance.readonly), user/password require basic auth
// (htpasswd).
type registryOptions struct {
	readOnly       bool
	user, password string
}

func startRegistry(t *testing.T, ns *netns.NS, port int, opt registryOptions) *registry {
	t.Helper()
	bin := testenv.RequireCommand(t, "docker-registry")
	dir := t.TempDir()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n", filepath.Join(dir, "data"))
	if opt.readOnly {
		cfg += "  maintenance:\n    readonly:\n      enabled: true\n"
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg += "http:\n  addr: " + addr + "\n"
	if opt.user != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opt.password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(opt.user+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg += "auth:\n  htpasswd:\n    realm: netinspect-test\n    path: " + htpasswd + "\n"
	}
	file := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	proc := startProcess(t, ns.Command(context.Background(), bin, "serve", file), false)
	client := &http.Client{Transport: &http.Transport{DialContext: controlplane.DialerIn(ns.Path())}, Timeout: 5 * time.Second}
	controlplane.Eventually(t, 30*time.Second, func() error {
		select {
		case <-proc.exited:
			t.Fatalf("docker-registry exited:\n%s", proc.logs)
		default:
		}
		resp, err := client.Get("http://" + addr + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
	return &registry{ns: ns, addr: addr}
}

// pushResult is what push.sh did.
type pushResult struct {
	out  string
	code int
}

// push runs push.sh inside the registry's namespace, over plain HTTP.
func push(t *testing.T, ns *netns.NS, archive, dest string, env ...string) pushResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(ctx, filepath.Join(dir, "push.sh"), archive, dest)
	// The machine's own registry credentials play no part.
	cmd.Env = append(os.Environ(), append([]string{"REGISTRY_TLS_VERIFY=false", "REGISTRY_AUTH_FILE=" + filepath.Join(t.TempDir(), "none.json")}, env...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return pushResult{out: string(out), code: code}
}

// remote is what the registry serves for ref: its raw manifest's digest,
// or an error (manifest unknown).
func remote(t *testing.T, ns *netns.NS, ref string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := append([]string{"skopeo", "inspect", "--raw", "--tls-verify=false"}, args...)
	out, err := ns.Command(ctx, append(argv, "docker://"+ref)...).Output()
	if err != nil {
		return "", fmt.Errorf("skopeo inspect %s: %w", ref, err)
	}
	sum := sha256.Sum256(out)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// allowDirty is what push.sh needs to push the test's build when the
// checkout has uncommitted changes (a developer's; CI's is clean).
func allowDirty(b *built) []string {
	if strings.HasSuffix(b.version, "-dirty") {
		return []string{"ALLOW_DIRTY=1"}
	}
	return nil
}

func TestImagePushToARegistry(t *testing.T) {
	b := sharedImage(t)
	ns := netns.New(t, "registry")
	reg := startRegistry(t, ns, 5000, registryOptions{})
	dest := reg.addr + "/team/netinspect:" + b.version

	r := push(t, ns, b.ociTar, dest, allowDirty(b)...)
	if r.code != 0 {
		t.Fatalf("push.sh exited %d:\n%s", r.code, r.out)
	}
	if want := "image-push: pushed " + dest + "@" + b.digest; !strings.Contains(r.out, want) {
		t.Errorf("push.sh said:\n%s\nwant %q", r.out, want)
	}
	// The registry serves the very index and images the archive holds.
	if got, err := remote(t, ns, dest); err != nil || got != b.digest {
		t.Errorf("registry serves %s as %s (%v), want %s", dest, got, err, b.digest)
	}
	repo := strings.TrimSuffix(dest, ":"+b.version)
	for arch, img := range readOCIArchive(t, b.ociTar).images(t) {
		ref := repo + "@" + string(img.desc.Digest)
		if got, err := remote(t, ns, ref); err != nil || got != string(img.desc.Digest) {
			t.Errorf("registry serves linux/%s %s as %s (%v)", arch, ref, got, err)
		}
	}
	// A second push of the same image changes nothing and says so.
	if r := push(t, ns, b.ociTar, dest, allowDirty(b)...); r.code != 0 || !strings.Contains(r.out, "pushed "+dest+"@"+b.digest) {
		t.Errorf("second push exited %d:\n%s", r.code, r.out)
	}
}

// A registry that refuses the push: push.sh exits 1 with the reason, never
// reports a push, and the tag does not exist.
func TestImagePushRefused(t *testing.T) {
	b := sharedImage(t)
	ns := netns.New(t, "noreg")
	readOnly := startRegistry(t, ns, 5001, registryOptions{readOnly: true})
	auth := startRegistry(t, ns, 5002, registryOptions{user: "ci", password: "s3cret"})
	authFile := writeAuth(t, auth.addr, "ci:s3cret")

	tests := []struct {
		name    string
		dest    string
		env     []string
		want    string   // in push.sh's error line
		inspect []string // skopeo args that may read the registry
	}{
		{name: "read-only registry", dest: readOnly.addr + "/team/netinspect:" + b.version,
			want: "StatusCode: 405, Method not allowed; the registry did not take the image and nothing was pushed under that tag"},
		{name: "registry that wants credentials", dest: auth.addr + "/team/netinspect:" + b.version,
			want: "authentication required", inspect: []string{"--creds", "ci:s3cret"}},
		{name: "wrong credentials", dest: auth.addr + "/team/netinspect:" + b.version,
			env:  []string{"REGISTRY_AUTH_FILE=" + writeAuth(t, auth.addr, "ci:wrong")},
			want: "nothing was pushed under that tag", inspect: []string{"--creds", "ci:s3cret"}},
		{name: "no registry listening", dest: "127.0.0.1:5009/team/netinspect:" + b.version,
			want: "connection refused"},
		{name: "dirty version", dest: readOnly.addr + "/team/netinspect:abc1234-dirty",
			want: "refusing to push " + readOnly.addr + "/team/netinspect:abc1234-dirty: the version says -dirty"},
		{name: "latest", dest: readOnly.addr + "/team/netinspect:latest",
			want: "never latest"},
		{name: "no tag", dest: readOnly.addr + "/team/netinspect",
			want: "want REGISTRY/REPOSITORY:TAG"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := allowDirty(b)
			if tt.name == "dirty version" {
				env = nil
			}
			r := push(t, ns, b.ociTar, tt.dest, append(env, tt.env...)...)
			if r.code != 1 {
				t.Errorf("push.sh exited %d, want 1:\n%s", r.code, r.out)
			}
			if !strings.Contains(r.out, "image-push: ") || !strings.Contains(r.out, tt.want) {
				t.Errorf("push.sh said:\n%s\nwant %q", r.out, tt.want)
			}
			if strings.Contains(r.out, "image-push: pushed") {
				t.Errorf("push.sh reports a push:\n%s", r.out)
			}
			if strings.HasPrefix(tt.dest, "127.0.0.1:5009") || strings.HasSuffix(tt.dest, "/netinspect") {
				return
			}
			if got, err := remote(t, ns, tt.dest, tt.inspect...); err == nil {
				t.Errorf("the registry serves %s as %s after a refused push", tt.dest, got)
			}
		})
	}

	// With the right credentials the same registry takes it.
	r := push(t, ns, b.ociTar, auth.addr+"/team/netinspect:"+b.version, append(allowDirty(b), "REGISTRY_AUTH_FILE="+authFile)...)
	if r.code != 0 || !strings.Contains(r.out, "pushed "+auth.addr+"/team/netinspect:"+b.version+"@"+b.digest) {
		t.Errorf("push with credentials exited %d:\n%s", r.code, r.out)
	}
}

// writeAuth writes a containers-auth.json with user:password for addr.
func writeAuth(t *testing.T, addr, userPassword string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "auth.json")
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{addr: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(userPassword)),
	}}})
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// make image-push needs REGISTRY, and checks the destination before it
// builds anything.
func TestMakeImagePushChecksFirst(t *testing.T) {
	testenv.RequireCommand(t, "make")
	out, err := exec.Command("make", "-C", "../..", "--no-print-directory", "image-push").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 || !strings.Contains(string(out), "set REGISTRY, e.g. make image-push REGISTRY=registry.example.com/team") {
		t.Errorf("make image-push without REGISTRY: %v\n%s", err, out)
	}
	out, err = exec.Command("make", "-C", "../..", "--no-print-directory", "image-push", "REGISTRY=registry.example.com/team", "VERSION=abc1234-dirty").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refusing to push registry.example.com/team/netinspect:abc1234-dirty") || strings.Contains(string(out), "image.sh") {
		t.Errorf("make image-push of a -dirty version: %v\n%s", err, out)
	}
	out, err = exec.Command("make", "-C", "../..", "--no-print-directory", "-n", "image-push", "REGISTRY=registry.example.com/team", "VERSION=v9.9.9").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "./deploy/image/push.sh bin/image/netinspect-v9.9.9.oci.tar registry.example.com/team/netinspect:v9.9.9") {
		t.Errorf("make -n image-push:\n%s", out)
	}
}
