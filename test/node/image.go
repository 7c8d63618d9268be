package node

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// sourceDir is this package's directory (test/node), found from the source
// file so that tests of any package can build the harness's images.
func sourceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// RepoRoot is the repository's top directory.
func RepoRoot() string { return filepath.Join(sourceDir(), "..", "..") }

// buildPauseImage compiles pause/pause.c statically to dir/pause (the
// node's own PID 1 runs it too) and writes it as the image PauseImage, a
// docker-archive dir/pause.tar that `ctr images import` names so.
func buildPauseImage(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "pause")
	if out, err := exec.Command("gcc", "-static", "-O2", "-Wall", "-Werror", "-o", bin, filepath.Join(sourceDir(), "pause", "pause.c")).CombinedOutput(); err != nil {
		t.Fatalf("gcc -static pause.c: %v\n%s", err, out)
	}
	archive := filepath.Join(dir, "pause.tar")
	// 65535: the unprivileged user Kubernetes' own pause image runs as.
	if err := writeSingleFileImage(archive, PauseImage, bin, "/pause", "65535:65535"); err != nil {
		t.Fatalf("pause image: %v", err)
	}
	return archive
}

// writeSingleFileImage writes a docker-archive of the image ref for this
// machine's platform: one layer holding the executable file at path, which
// is the entrypoint, run as user.
func writeSingleFileImage(archive, ref, file, path, user string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	if err := tw.WriteHeader(&tar.Header{Name: path[1:], Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(b); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar.Bytes())), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = v1.Config{Entrypoint: []string{path}, User: user}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		return fmt.Errorf("write %s: %w", archive, err)
	}
	return nil
}
