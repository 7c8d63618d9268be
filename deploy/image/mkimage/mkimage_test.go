package main

import (
	"archive/tar"
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

// iptablesPostinst is the start of Debian trixie's iptables 1.8.11-2
// postinst, the script the image's most important links come from.
const iptablesPostinst = `#!/bin/sh

set -e

if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ]; then
	update-alternatives \
	  --install /usr/sbin/iptables iptables /usr/sbin/iptables-legacy 10 \
	  --slave /usr/sbin/iptables-restore iptables-restore /usr/sbin/iptables-legacy-restore \
	  --slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-legacy-save
        update-alternatives \
          --install /usr/sbin/iptables iptables /usr/sbin/iptables-nft 20 \
          --slave /usr/sbin/iptables-restore iptables-restore /usr/sbin/iptables-nft-restore \
          --slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-nft-save
fi
`

// mawkPostinst is trixie's mawk postinst: its slaves include man pages,
// which the image leaves out.
const mawkPostinst = `#!/bin/sh
set -e
# Automatically added by dh_installalternatives/13.24.1
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
        update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \
            --slave /usr/share/man/man1/awk.1.gz awk.1.gz /usr/share/man/man1/mawk.1.gz \
            --slave /usr/bin/nawk nawk /usr/bin/mawk
fi
`

func TestParseAlternatives(t *testing.T) {
	tests := []struct {
		name, script string
		want         []alternative
		wantErr      string
	}{
		{
			name:   "iptables: legacy and nft groups with slaves",
			script: iptablesPostinst,
			want: []alternative{
				{priority: 10, links: []altLink{
					{"/usr/sbin/iptables", "iptables", "/usr/sbin/iptables-legacy"},
					{"/usr/sbin/iptables-restore", "iptables-restore", "/usr/sbin/iptables-legacy-restore"},
					{"/usr/sbin/iptables-save", "iptables-save", "/usr/sbin/iptables-legacy-save"},
				}},
				{priority: 20, links: []altLink{
					{"/usr/sbin/iptables", "iptables", "/usr/sbin/iptables-nft"},
					{"/usr/sbin/iptables-restore", "iptables-restore", "/usr/sbin/iptables-nft-restore"},
					{"/usr/sbin/iptables-save", "iptables-save", "/usr/sbin/iptables-nft-save"},
				}},
			},
		},
		{
			name:   "other update-alternatives calls are not installs",
			script: "update-alternatives --remove iptables /usr/sbin/iptables-legacy\nif update-alternatives --query awk >/dev/null; then :; fi\n",
		},
		{
			name:    "a variable in the call is an error, not a guess",
			script:  "update-alternatives --install /usr/bin/x x \"$target\" 10\n",
			wantErr: "shell syntax",
		},
		{
			name:    "options before --install are an error",
			script:  "update-alternatives --quiet --install /usr/bin/x x /usr/bin/y 10\n",
			wantErr: "options before --install",
		},
		{
			name:    "a bad priority is an error",
			script:  "update-alternatives --install /usr/bin/x x /usr/bin/y high\n",
			wantErr: "priority",
		},
		{
			name:    "a truncated slave is an error",
			script:  "update-alternatives --install /usr/bin/x x /usr/bin/y 1 --slave /usr/bin/z z\n",
			wantErr: "--slave LINK NAME PATH",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseAlternatives("x.postinst", tt.script)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d groups %+v, want %d", len(got), got, len(tt.want))
			}
			for i := range got {
				if got[i].priority != tt.want[i].priority || len(got[i].links) != len(tt.want[i].links) {
					t.Fatalf("group %d: %+v, want %+v", i, got[i], tt.want[i])
				}
				for j := range got[i].links {
					if got[i].links[j] != tt.want[i].links[j] {
						t.Errorf("group %d link %d: %+v, want %+v", i, j, got[i].links[j], tt.want[i].links[j])
					}
				}
			}
		})
	}
}

// debianTree is a small unpacked root filesystem: what rootfs.sh leaves.
func debianTree() fileTree {
	t := fileTree{}
	for _, d := range []string{"usr", "usr/bin", "usr/sbin", "usr/share", "usr/share/man", "usr/share/man/man1",
		"usr/share/doc", "usr/share/doc/iptables", "var", "var/run", "var/lib", "var/lib/dpkg", "var/lib/dpkg/info",
		"etc", "etc/apt", "dev"} {
		t.addDir(d, 0o755)
	}
	t.addSymlink("sbin", "usr/sbin")
	t.addFile("usr/sbin/xtables-nft-multi", 0o755, []byte("nft"))
	t.addFile("usr/sbin/xtables-legacy-multi", 0o755, []byte("legacy"))
	for _, l := range []string{"iptables-nft", "iptables-nft-save", "iptables-nft-restore"} {
		t.addSymlink("usr/sbin/"+l, "xtables-nft-multi")
	}
	for _, l := range []string{"iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore"} {
		t.addSymlink("usr/sbin/"+l, "xtables-legacy-multi")
	}
	t.addFile("usr/bin/mawk", 0o755, []byte("mawk"))
	t.addFile("usr/share/man/man1/mawk.1.gz", 0o644, []byte("man"))
	t.addFile("usr/share/doc/iptables/copyright", 0o644, []byte("GPL"))
	t.addFile("usr/share/doc/iptables/changelog.gz", 0o644, []byte("log"))
	t.addFile("etc/apt/sources.list", 0o644, []byte("deb http://deb.debian.org/debian trixie main"))
	t.addFile("etc/resolv.conf", 0o644, []byte("nameserver 10.0.0.1"))
	t.addFile("var/lib/dpkg/info/iptables.postinst", 0o755, []byte(iptablesPostinst))
	t.addFile("var/lib/dpkg/info/mawk.postinst", 0o755, []byte(mawkPostinst))
	t["dev"].hdr.Mode = 0o755
	return t
}

func TestFilterAndConfigureMakeWhatDpkgWould(t *testing.T) {
	tree := debianTree()
	if err := tree.filter(); err != nil {
		t.Fatal(err)
	}
	if err := configure(tree); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"etc/apt", "etc/apt/sources.list", "etc/resolv.conf", "usr/share/doc/iptables/changelog.gz",
		"usr/share/man/man1/mawk.1.gz", "usr/share/man/man1", "usr/share/man/man1/awk.1.gz"} {
		if _, ok := tree[gone]; ok {
			t.Errorf("%s is in the image", gone)
		}
	}
	for _, kept := range []string{"usr/share/doc/iptables/copyright", "usr/share/man", "usr/share/doc", "dev"} {
		if _, ok := tree[kept]; !ok {
			t.Errorf("%s is not in the image", kept)
		}
	}
	links := []struct{ name, link, resolves string }{
		{"usr/sbin/iptables", "/etc/alternatives/iptables", "usr/sbin/xtables-nft-multi"},
		{"etc/alternatives/iptables", "/usr/sbin/iptables-nft", "usr/sbin/xtables-nft-multi"},
		{"usr/sbin/iptables-save", "/etc/alternatives/iptables-save", "usr/sbin/xtables-nft-multi"},
		{"usr/sbin/iptables-restore", "/etc/alternatives/iptables-restore", "usr/sbin/xtables-nft-multi"},
		{"usr/bin/awk", "/etc/alternatives/awk", "usr/bin/mawk"},
		{"usr/bin/nawk", "/etc/alternatives/nawk", "usr/bin/mawk"},
		{"var/run", "/run", "run"},
		{"var/lock", "/run/lock", "run/lock"},
	}
	for _, l := range links {
		e, ok := tree[l.name]
		if !ok || e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != l.link {
			t.Errorf("%s: %+v, want a symlink to %s", l.name, e, l.link)
			continue
		}
		if _, got, err := tree.resolve(l.name); err != nil || got != l.resolves {
			t.Errorf("%s resolves to %q (%v), want %s", l.name, got, err, l.resolves)
		}
	}
	if _, ok := tree["etc/passwd"]; !ok {
		t.Error("no etc/passwd")
	}
}

func TestAlternativeWithMissingMasterIsAnError(t *testing.T) {
	tree := debianTree()
	delete(tree, "usr/bin/mawk")
	if err := configure(tree); err == nil || !strings.Contains(err.Error(), "alternative awk") {
		t.Fatalf("configure: %v, want an error about alternative awk", err)
	}
}

func TestResolve(t *testing.T) {
	tree := debianTree()
	tests := []struct{ name, want, wantErr string }{
		{name: "/sbin/iptables-nft-save", want: "usr/sbin/xtables-nft-multi"},
		{name: "usr/sbin/../bin/mawk", want: "usr/bin/mawk"},
		{name: "/usr/sbin/nft", wantErr: "does not exist"},
	}
	tree.addSymlink("loop", "loop")
	tests = append(tests, struct{ name, want, wantErr string }{name: "loop", wantErr: "too many levels"})
	for _, tt := range tests {
		_, got, err := tree.resolve(tt.name)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("resolve(%s): %q, %v; want an error containing %q", tt.name, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("resolve(%s) = %q, %v; want %s", tt.name, got, err, tt.want)
		}
	}
}

// readLayer lists a layer's entries as "type name [-> link]".
func readLayer(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		s := string(h.Typeflag) + " " + h.Name
		if h.Linkname != "" {
			s += " -> " + h.Linkname
		}
		if !h.ModTime.Equal(time.Unix(42, 0)) || h.Uname != "" || h.Gname != "" || len(h.PAXRecords) != 0 {
			t.Errorf("%s: time %v, owner names %q/%q, PAX %v; want time 42, no names, no PAX", h.Name, h.ModTime, h.Uname, h.Gname, h.PAXRecords)
		}
		out = append(out, s)
	}
}

func TestLayerTarIsCanonical(t *testing.T) {
	// The same files read in two orders, with times, owner names and
	// extended attributes that differ, give the same bytes.
	build := func(order []string, stamp time.Time) []byte {
		var in bytes.Buffer
		tw := tar.NewWriter(&in)
		for _, n := range order {
			h := &tar.Header{Name: "./" + n, Mode: 0o644, ModTime: stamp, Uname: "root", Typeflag: tar.TypeReg,
				PAXRecords: map[string]string{"SCHILY.xattr.user.x": stamp.String()}}
			body := "data of b"
			switch n {
			case "usr":
				h.Typeflag, h.Name, h.Mode = tar.TypeDir, "./usr/", 0o755
			case "usr/a":
				h.Typeflag, h.Linkname = tar.TypeLink, "./usr/b"
			}
			if h.Typeflag == tar.TypeReg {
				h.Size = int64(len(body))
			}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				tw.Write([]byte(body))
			}
		}
		tw.Close()
		tree, err := readTar(&in)
		if err != nil {
			t.Fatal(err)
		}
		if err := tree.filter(); err != nil {
			t.Fatal(err)
		}
		b, err := tree.layerTar(time.Unix(42, 0))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a := build([]string{"usr", "usr/b", "usr/a"}, time.Unix(1000, 0))
	b := build([]string{"usr", "usr/b", "usr/a"}, time.Unix(2000, 0))
	if !bytes.Equal(a, b) {
		t.Error("the same files with other times and attributes give other layer bytes")
	}
	// usr/a, the hard link, sorts first: it becomes the file and usr/b
	// the link to it, so the layer can be unpacked in order.
	got := strings.Join(readLayer(t, a), "\n")
	want := "5 usr/\n0 usr/a\n1 usr/b -> usr/a"
	if got != want {
		t.Errorf("layer entries:\n%s\nwant:\n%s", got, want)
	}
}

func TestPlatformFlag(t *testing.T) {
	var p platformFlags
	if err := p.Set("linux/arm64=/c/rootfs.tar,/b/netinspect"); err != nil {
		t.Fatal(err)
	}
	if p[0] != (platformInput{arch: "arm64", rootfs: "/c/rootfs.tar", binary: "/b/netinspect"}) {
		t.Errorf("parsed %+v", p[0])
	}
	for _, bad := range []string{"linux/arm64=/c/rootfs.tar,/b/netinspect", "arm64=a,b", "linux/amd64=a", "linux/=a,b"} {
		if err := p.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}
