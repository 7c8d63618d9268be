package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// sourceDir is this package's directory (test/node), found from the source
// file so that tests of any package can build the harness's images.
func sourceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// RepoRoot is the repository's top directory.
func RepoRoot() string { return filepath.Join(sourceDir(), "..", "..") }

// layer is one layer of packImage: a tar file added as it is, or a file
// inserted at a path.
type layer struct {
	tar        string // a tar archive to add as a layer
	file, path string // or one file to insert at path
}

// image describes what packImage makes.
type image struct {
	ref        string // reference the archive carries, e.g. registry.k8s.io/pause:3.10
	layers     []layer
	entrypoint []string
	user       string
	// ports are exposed ports ("10271/tcp").
	ports []string
}

// packImage builds an OCI image with umoci in dir/<name>-oci and writes it
// as a docker-archive (dir/<name>.tar) named img.ref with skopeo, the form
// `ctr images import` reads with its name. It returns the archive's path.
func packImage(t testing.TB, dir, name string, img image) string {
	t.Helper()
	layout := filepath.Join(dir, name+"-oci")
	tagged := layout + ":" + name
	run := func(argv ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("build image %s: %s: %v\n%s", img.ref, strings.Join(argv, " "), err, out)
		}
	}
	run("umoci", "init", "--layout", layout)
	run("umoci", "new", "--image", tagged)
	for _, l := range img.layers {
		if l.tar != "" {
			run("umoci", "raw", "add-layer", "--image", tagged, l.tar)
		} else {
			run("umoci", "insert", "--image", tagged, l.file, l.path)
		}
	}
	cfg := []string{"umoci", "config", "--image", tagged, "--os", "linux", "--architecture", runtime.GOARCH,
		"--config.user", img.user, "--clear=config.entrypoint", "--clear=config.cmd"}
	for _, e := range img.entrypoint {
		cfg = append(cfg, "--config.entrypoint", e)
	}
	for _, p := range img.ports {
		cfg = append(cfg, "--config.exposedports", p)
	}
	run(cfg...)
	archive := filepath.Join(dir, name+".tar")
	run("skopeo", "copy", "--quiet", "oci:"+tagged, "docker-archive:"+archive+":"+img.ref)
	return archive
}

// buildPauseImage compiles pause/pause.c statically (also kept at
// dir/pause/rootfs/pause for the node's own PID 1) and packs it as
// PauseImage.
func buildPauseImage(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "pause", "rootfs", "pause")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-static", "-O2", "-Wall", "-Werror", "-o", bin, filepath.Join(sourceDir(), "pause", "pause.c")).CombinedOutput(); err != nil {
		t.Fatalf("gcc -static pause.c: %v\n%s", err, out)
	}
	// 65535: the unprivileged user Kubernetes' own pause image runs as.
	return packImage(t, dir, "pause", image{ref: PauseImage, layers: []layer{{file: bin, path: "/pause"}},
		entrypoint: []string{"/pause"}, user: "65535:65535"})
}

// String describes an image for logs.
func (img image) String() string { return fmt.Sprintf("%s (%d layers)", img.ref, len(img.layers)) }
