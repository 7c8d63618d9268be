package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/testenv"
)

// ImageRepository is the repository deploy/ names the exporter's image by.
const ImageRepository = "ghcr.io/netinspect/netinspect"

// NetinspectImage builds the exporter's image for the node's platform with
// deploy/image/image.sh (`make image`: the static binary of build.sh on the
// Debian packages of deploy/image/packages, the root filesystem cached by
// that list) into dir and returns the OCI archive, whose index names it
// ImageRepository:tag for `ctr images import` (ImportImage).
func NetinspectImage(t testing.TB, dir, tag string) string {
	t.Helper()
	testenv.RequireCommand(t, "mmdebstrap")
	start := time.Now()
	archive, err := BuildNetinspectImage(context.Background(), dir, tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("deploy/image/image.sh built %s in %v", filepath.Base(archive), time.Since(start).Round(100*time.Millisecond))
	return archive
}

// BuildNetinspectImage is NetinspectImage for a goroutine of its own (it
// reports instead of failing a test), stopped by ctx.
func BuildNetinspectImage(ctx context.Context, dir, tag string) (string, error) {
	script := filepath.Join(RepoRoot(), "deploy", "image", "image.sh")
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, dir)
	cmd.Env = append(os.Environ(), "VERSION="+tag, "REVISION=test-node", "PLATFORMS=linux/"+runtime.GOARCH, "IMAGE="+ImageRepository)
	// Cancelled, the script's children (go build, mkimage) stop with it:
	// they are in its process group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %w\n%s", script, err, out)
	}
	l := strings.Split(strings.TrimSpace(string(out)), "\n")
	archive := strings.TrimSpace(l[len(l)-1])
	if _, err := os.Stat(archive); err != nil {
		return "", fmt.Errorf("%s: last line %q is no archive:\n%s", script, archive, out)
	}
	return archive, nil
}
