package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/testenv"
)

// ImageRepository is the repository deploy/ names the exporter's image by.
const ImageRepository = "ghcr.io/netinspect/netinspect"

var (
	dockerfileSuite    = regexp.MustCompile(`(?m)^FROM debian:([a-z]+)-slim\s*$`)
	dockerfilePackages = regexp.MustCompile(`apt-get install -y --no-install-recommends ([a-z0-9 .+-]+?)\s*\\?\n`)
)

// NetinspectImage builds the exporter's image for the node and returns a
// docker-archive of it named ImageRepository:tag: the static binary of
// deploy/image/build.sh on a Debian root filesystem with the packages the
// Dockerfile installs, from the same Debian suite, made by mmdebstrap (cached
// by suite and package list) and packed with umoci.
//
// Interim: issue 18's deploy/image/image.sh (`make image`) builds the image
// from the Dockerfile's package list; where it exists its OCI archive is
// used, and the Dockerfile-parsing build below is to be deleted once it is
// on main.
func NetinspectImage(t testing.TB, dir, tag string) string {
	t.Helper()
	testenv.RequireCommand(t, "mmdebstrap")
	if script := filepath.Join(RepoRoot(), "deploy", "image", "image.sh"); fileExists(script) {
		return makeImage(t, script, dir, tag)
	}
	df, err := os.ReadFile(filepath.Join(RepoRoot(), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	suite := dockerfileSuite.FindSubmatch(df)
	pkgs := dockerfilePackages.FindSubmatch(df)
	if suite == nil || pkgs == nil {
		t.Fatalf("Dockerfile: no `FROM debian:<suite>-slim` or `apt-get install -y --no-install-recommends <packages>` line")
	}
	rootfs := debianRootfs(t, string(suite[1]), strings.Fields(string(pkgs[1])))

	bin := filepath.Join(dir, "netinspect")
	build := exec.Command(filepath.Join(RepoRoot(), "deploy", "image", "build.sh"), bin)
	build.Env = append(os.Environ(), "VERSION="+tag, "REVISION=test-node")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("deploy/image/build.sh: %v\n%s", err, out)
	}
	return packImage(t, dir, "netinspect-"+tag, image{
		ref:        ImageRepository + ":" + tag,
		layers:     []layer{{tar: rootfs}, {file: bin, path: "/usr/bin/netinspect"}},
		entrypoint: []string{"/usr/bin/netinspect"},
		user:       "0:0",
		ports:      []string{"10271/tcp"},
	})
}

// debianRootfs returns a tar of a minimal Debian root filesystem of suite
// with packages, building it with mmdebstrap (a few minutes) unless the cache
// holds one for the same suite and package list.
func debianRootfs(t testing.TB, suite string, packages []string) string {
	t.Helper()
	opts := []string{"--variant=minbase", "--include=" + strings.Join(packages, ","),
		"--aptopt=Acquire::Languages \"none\"",
		"--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*"}
	sum := sha256.Sum256([]byte(suite + "\n" + strings.Join(opts, "\n")))
	dir := filepath.Join(filepath.Dir(controlplane.CacheDir()), "rootfs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("debian-%s-%s.tar", suite, hex.EncodeToString(sum[:8])))
	// One build at a time: test packages run in parallel.
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err == nil {
		return path
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	tmp := path + ".tmp"
	out, err := exec.CommandContext(ctx, "mmdebstrap", append(opts, suite, tmp)...).CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		t.Fatalf("mmdebstrap %s: %v\n%s", suite, err, out)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the Debian %s root filesystem (%s) in %v", suite, strings.Join(packages, " "), time.Since(start).Round(time.Second))
	return path
}

// makeImage runs deploy/image/image.sh for the node's platform only and
// returns the OCI archive it writes (its last line of output), whose index
// names the image ImageRepository:tag.
func makeImage(t testing.TB, script, dir, tag string) string {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, dir)
	cmd.Env = append(os.Environ(), "VERSION="+tag, "REVISION=test-node", "PLATFORMS=linux/"+runtime.GOARCH, "IMAGE="+ImageRepository)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	l := strings.Split(strings.TrimSpace(string(out)), "\n")
	archive := strings.TrimSpace(l[len(l)-1])
	if !fileExists(archive) {
		t.Fatalf("%s: last line %q is no archive:\n%s", script, archive, out)
	}
	t.Logf("deploy/image/image.sh built %s in %v", filepath.Base(archive), time.Since(start).Round(100*time.Millisecond))
	return archive
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
