package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
)

// entry is one file of a layer: its tar header and, for regular files, its
// content.
type entry struct {
	hdr  tar.Header
	data []byte
}

// fileTree is a layer's files by clean relative path ("usr/bin/netinspect",
// no leading "./" or "/", no trailing "/").
type fileTree map[string]*entry

// readTar reads a tar stream (rootfs.sh's output) into a fileTree. Device
// nodes are dropped: the container runtime mounts its own /dev.
func readTar(r io.Reader) (fileTree, error) {
	tree := fileTree{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return tree, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read root filesystem tar: %w", err)
		}
		name := cleanName(h.Name)
		if name == "" {
			continue // the root directory itself
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			continue
		default:
			return nil, fmt.Errorf("read root filesystem tar: %s: unsupported entry type %q", h.Name, h.Typeflag)
		}
		e := &entry{hdr: *h}
		if h.Typeflag == tar.TypeReg {
			if e.data, err = io.ReadAll(tr); err != nil {
				return nil, fmt.Errorf("read root filesystem tar: %s: %w", h.Name, err)
			}
		}
		if h.Typeflag == tar.TypeLink {
			e.hdr.Linkname = cleanName(h.Linkname)
		}
		tree[name] = e
	}
}

func cleanName(name string) string {
	name = strings.TrimPrefix(name, "./")
	name = strings.Trim(name, "/")
	if name == "." {
		return ""
	}
	return name
}

// dropRules are the paths the image leaves out, relative to the root.
// mmdebstrap leaves apt's state and some of the build host's files (its
// /etc/hostname and /etc/resolv.conf) in the tree; the container runtime
// provides /etc/hostname, /etc/hosts, /etc/resolv.conf and /dev. The
// documentation is left out as in Debian's slim images (their dpkg
// path-exclude rules), except the copyright files: the image redistributes
// the packages, and their licences go with them.
var dropRules = []struct {
	prefix  string // the directory or file, relative to the root
	keepDir bool   // keep the directory itself, drop what is inside
	except  func(name string) bool
}{
	{prefix: "dev", keepDir: true},
	{prefix: "etc/apt"},
	{prefix: "var/lib/apt"},
	{prefix: "var/cache/apt"},
	{prefix: "var/log/apt"},
	{prefix: "etc/hostname"},
	{prefix: "etc/resolv.conf"},
	{prefix: "etc/fstab"},
	{prefix: "usr/share/doc", keepDir: true, except: isCopyright},
	{prefix: "usr/share/groff", keepDir: true},
	{prefix: "usr/share/info", keepDir: true},
	{prefix: "usr/share/linda", keepDir: true},
	{prefix: "usr/share/lintian/overrides", keepDir: true},
	{prefix: "usr/share/locale", keepDir: true},
	{prefix: "usr/share/man", keepDir: true},
}

// isCopyright keeps usr/share/doc/<package>/copyright and its directory.
func isCopyright(name string) bool {
	rest := strings.TrimPrefix(name, "usr/share/doc/")
	pkg, file, _ := strings.Cut(rest, "/")
	return pkg != "" && (file == "" || file == "copyright")
}

func dropped(name string) bool {
	for _, r := range dropRules {
		inside := strings.HasPrefix(name, r.prefix+"/")
		if name != r.prefix && !inside {
			continue
		}
		if name == r.prefix && r.keepDir {
			return false
		}
		if r.except != nil && r.except(name) {
			return false
		}
		return true
	}
	return false
}

// filter removes the dropped paths. A kept symlink or hard link whose
// target is dropped would dangle: that is an error, not a broken image.
func (t fileTree) filter() error {
	for name := range t {
		if dropped(name) {
			delete(t, name)
		}
	}
	for name, e := range t {
		if e.hdr.Typeflag == tar.TypeLink {
			if _, ok := t[e.hdr.Linkname]; !ok {
				return fmt.Errorf("%s is a hard link to %s, which the image leaves out", name, e.hdr.Linkname)
			}
		}
	}
	return nil
}

// resolve follows symlinks (absolute ones relative to the tree's root)
// through every component of name and returns the entry it names.
func (t fileTree) resolve(name string) (*entry, string, error) {
	const maxLinks = 40 // as the kernel's MAXSYMLINKS
	cur := ""
	rest := strings.Split(cleanName(name), "/")
	for hops := 0; len(rest) > 0; {
		part := rest[0]
		rest = rest[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur)
			if cur == "." {
				cur = ""
			}
			continue
		}
		next := path.Join(cur, part)
		e, ok := t[next]
		if !ok {
			return nil, "", fmt.Errorf("%s: %s does not exist", name, next)
		}
		if e.hdr.Typeflag != tar.TypeSymlink {
			cur = next
			continue
		}
		if hops++; hops > maxLinks {
			return nil, "", fmt.Errorf("%s: too many levels of symbolic links", name)
		}
		target := e.hdr.Linkname
		if strings.HasPrefix(target, "/") {
			cur = ""
		}
		rest = append(strings.Split(strings.Trim(target, "/"), "/"), rest...)
	}
	e, ok := t[cur]
	if !ok {
		return nil, "", fmt.Errorf("%s: not found", name)
	}
	return e, cur, nil
}

// addDir adds a directory owned by root, unless the path exists.
func (t fileTree) addDir(name string, mode int64) {
	if _, ok := t[name]; !ok {
		t[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
	}
}

// addSymlink adds (or replaces) a symlink owned by root.
func (t fileTree) addSymlink(name, target string) {
	t[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// addFile adds (or replaces) a regular file owned by root.
func (t fileTree) addFile(name string, mode int64, data []byte) {
	t[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}, data: data}
}

// layerTar writes the tree as a layer: entries in byte order of their
// names (a directory before what it holds), every time set to mtime,
// numeric owners only, no extended attributes or PAX records, so that the
// same files give the same bytes. A hard link that sorts before the file it
// links to swaps places with it, since a tar reader needs the file first.
func (t fileTree) layerTar(mtime time.Time) ([]byte, error) {
	names := make([]string, 0, len(t))
	for n := range t {
		names = append(names, n)
	}
	sort.Strings(names)
	t.orderHardLinks(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := t[n]
		h := tar.Header{
			Typeflag: e.hdr.Typeflag,
			Name:     n,
			Linkname: e.hdr.Linkname,
			Mode:     e.hdr.Mode & 0o7777,
			Uid:      e.hdr.Uid,
			Gid:      e.hdr.Gid,
			ModTime:  mtime,
		}
		switch h.Typeflag {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeReg:
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("write layer entry %s: %w", n, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("write layer entry %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	return buf.Bytes(), nil
}

// orderHardLinks makes the first name (in order) of each set of hard links
// the regular file and the later ones links to it.
func (t fileTree) orderHardLinks(names []string) {
	pos := make(map[string]int, len(names))
	for i, n := range names {
		pos[n] = i
	}
	for _, n := range names {
		e := t[n]
		if e.hdr.Typeflag != tar.TypeLink || pos[e.hdr.Linkname] < pos[n] {
			continue
		}
		target := e.hdr.Linkname
		file := t[target]
		// n becomes the file; target and every other link to it point at n.
		t[n] = &entry{hdr: file.hdr, data: file.data}
		t[target] = &entry{hdr: tar.Header{Typeflag: tar.TypeLink, Linkname: n, Mode: file.hdr.Mode, Uid: file.hdr.Uid, Gid: file.hdr.Gid}}
		for _, other := range names {
			if o := t[other]; o.hdr.Typeflag == tar.TypeLink && o.hdr.Linkname == target {
				o.hdr.Linkname = n
			}
		}
	}
}
