package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// kernelTree is an unpacked Debian kernel package with modules.dep.
type kernelTree struct {
	release string // e.g. 6.1.0-56-amd64
	vmlinuz string
	modDir  string              // lib/modules/<release>
	deps    map[string][]string // module path -> dependency paths, as in modules.dep
	byName  map[string]string   // module name (dashes as underscores) -> path
	builtin map[string]bool     // module names built into the kernel
}

// CacheDir is where unpacked kernels are kept:
// ${NETINSPECT_CACHE:-$HOME/.cache/netinspect}/vm.
func CacheDir() string {
	base := os.Getenv("NETINSPECT_CACHE")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		base = filepath.Join(home, ".cache", "netinspect")
	}
	return filepath.Join(base, "vm")
}

func command(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// kernelPackage resolves linux-image-amd64 to the versioned image package it
// depends on, from the local apt lists (running apt-get update once if they
// are empty).
func kernelPackage(ctx context.Context) (string, error) {
	for attempt := 0; attempt < 2; attempt++ {
		out, err := command(ctx, "", "apt-cache", "depends", "linux-image-amd64")
		if err == nil {
			for _, l := range strings.Split(out, "\n") {
				l = strings.TrimSpace(l)
				if p, ok := strings.CutPrefix(l, "Depends: "); ok && strings.HasPrefix(p, "linux-image-") {
					return p, nil
				}
			}
		}
		if attempt == 0 {
			if _, err := command(ctx, "", "apt-get", "update", "-qq"); err != nil {
				return "", err
			}
		}
	}
	return "", fmt.Errorf("apt-cache depends linux-image-amd64 names no linux-image package")
}

// kernel returns the unpacked kernel, downloading it on first use. A lock
// file serialises test packages that prepare it at the same time.
func kernel(pkg string) (*kernelTree, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if pkg == "" {
		var err error
		if pkg, err = kernelPackage(ctx); err != nil {
			return nil, err
		}
	}
	cache := CacheDir()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", cache, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	dir := filepath.Join(cache, pkg)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		if err := fetchKernel(ctx, pkg, dir); err != nil {
			return nil, err
		}
	}
	return loadKernel(dir)
}

func fetchKernel(ctx context.Context, pkg, dir string) error {
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	// apt-get download writes into the working directory; as root it warns
	// that _apt cannot write there, which is harmless.
	if _, err := command(ctx, tmp, "apt-get", "download", "-q", pkg); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	tree := filepath.Join(tmp, "tree")
	if _, err := command(ctx, "", "dpkg-deb", "-x", debs[0], tree); err != nil {
		return err
	}
	os.Remove(debs[0])
	rels, _ := filepath.Glob(filepath.Join(tree, "lib/modules/*"))
	if len(rels) != 1 {
		return fmt.Errorf("%s: expected one lib/modules/<release>, found %d", pkg, len(rels))
	}
	// The package ships no modules.dep; dpkg's postinst would run depmod.
	if _, err := command(ctx, "", "depmod", "-b", tree, filepath.Base(rels[0])); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return err
	}
	os.RemoveAll(dir)
	return os.Rename(tmp, dir)
}

func loadKernel(dir string) (*kernelTree, error) {
	tree := filepath.Join(dir, "tree")
	rels, _ := filepath.Glob(filepath.Join(tree, "lib/modules/*"))
	if len(rels) != 1 {
		return nil, fmt.Errorf("%s: expected one lib/modules/<release>", dir)
	}
	k := &kernelTree{
		release: filepath.Base(rels[0]),
		modDir:  rels[0],
		deps:    map[string][]string{},
		byName:  map[string]string{},
		builtin: map[string]bool{},
	}
	k.vmlinuz = filepath.Join(tree, "boot", "vmlinuz-"+k.release)
	if _, err := os.Stat(k.vmlinuz); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(k.modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	scanLines(b, func(l string) {
		mod, deps, ok := strings.Cut(l, ":")
		if !ok {
			return
		}
		k.deps[mod] = strings.Fields(deps)
		k.byName[moduleName(mod)] = mod
	})
	if b, err := os.ReadFile(filepath.Join(k.modDir, "modules.builtin")); err == nil {
		scanLines(b, func(l string) { k.builtin[moduleName(l)] = true })
	}
	return k, nil
}

func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// closure returns the module files to insmod, each after its dependencies.
// modules.dep lists every module's full dependency set with the module to
// load first last, as modprobe reads it.
func (k *kernelTree) closure(names []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var add func(path string)
	add = func(path string) {
		if seen[path] {
			return
		}
		seen[path] = true
		deps := k.deps[path]
		for i := len(deps) - 1; i >= 0; i-- {
			add(deps[i])
		}
		out = append(out, path)
	}
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		if k.builtin[n] {
			continue
		}
		p, ok := k.byName[n]
		if !ok {
			return nil, fmt.Errorf("kernel %s has no module %s (built in, or absent)", k.release, n)
		}
		add(p)
	}
	return out, nil
}
