package main

import (
	"archive/tar"
	"fmt"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// rootfs.sh only unpacks the Debian packages (mmdebstrap --variant=extract):
// no maintainer script runs, so that the arm64 root filesystem is made on an
// amd64 machine without emulation, exactly as the amd64 one. configure does
// the part of what those scripts would have done that the image needs, the
// same way for every architecture:
//   - update-alternatives: the links the packages' postinst scripts install
//     (iptables -> iptables-nft, iptables-save -> iptables-nft-save,
//     ip6tables..., awk -> mawk), read from the scripts themselves;
//   - base-files' postinst: /var/run -> /run and /var/lock -> /run/lock;
//   - base-passwd's preinst: /etc/passwd and /etc/group, here just root and
//     nobody (the exporter runs as uid 0; nothing in the image looks up
//     other users).
//
// The dynamic linker cache (/etc/ld.so.cache, libc-bin's ldconfig trigger)
// is not made: without it, Debian's glibc searches its multiarch library
// directories, which is where every library of these packages lives (the
// image tests run each tool).
func configure(t fileTree) error {
	if err := t.installAlternatives(); err != nil {
		return err
	}
	for _, d := range []struct{ dir, link string }{{"var/run", "/run"}, {"var/lock", "/run/lock"}} {
		if e, ok := t[d.dir]; ok && e.hdr.Typeflag == tar.TypeDir && t.isEmptyDir(d.dir) {
			delete(t, d.dir)
		}
		if _, ok := t[d.dir]; !ok {
			t.addSymlink(d.dir, d.link)
		}
	}
	t.addDir("run", 0o755)
	t.addDir("run/lock", 0o1777)
	t.addFile("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"))
	t.addFile("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	return nil
}

func (t fileTree) isEmptyDir(dir string) bool {
	for n := range t {
		if strings.HasPrefix(n, dir+"/") {
			return false
		}
	}
	return true
}

// alternative is one `update-alternatives --install` group: the master
// link and its slaves, each a link, a name and the path it points to.
type alternative struct {
	priority int
	links    []altLink // links[0] is the master
	script   string    // the postinst it came from
}

type altLink struct{ link, name, path string }

// parseAlternatives returns the --install groups of a maintainer script.
// Only literal arguments are understood; a call with shell expansions is an
// error rather than a guess, so that a package whose script does that is
// noticed when it enters the list.
func parseAlternatives(script, text string) ([]alternative, error) {
	text = strings.ReplaceAll(text, "\\\n", " ")
	var out []alternative
	for i, line := range strings.Split(text, "\n") {
		fields := strings.Fields(line)
		start := -1
		for j, f := range fields {
			if f == "update-alternatives" {
				start = j
				break
			}
		}
		if start < 0 || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		args := fields[start+1:]
		if len(args) == 0 || args[0] != "--install" {
			// --remove, --set, --query ...: not run by a fresh install
			// (postinst configure); --install is all that makes links.
			if slices.Contains(args, "--install") {
				return nil, fmt.Errorf("%s:%d: update-alternatives with options before --install: %q", script, i+1, line)
			}
			continue
		}
		for _, a := range args {
			if strings.ContainsAny(a, "$`\"'*?;|&<>(){}") {
				return nil, fmt.Errorf("%s:%d: update-alternatives call with shell syntax %q: cannot be read without running the script", script, i+1, a)
			}
		}
		if len(args) < 5 {
			return nil, fmt.Errorf("%s:%d: short update-alternatives --install call: %q", script, i+1, line)
		}
		prio, err := strconv.Atoi(args[4])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: update-alternatives priority %q: %w", script, i+1, args[4], err)
		}
		alt := alternative{priority: prio, script: script, links: []altLink{{args[1], args[2], args[3]}}}
		for rest := args[5:]; len(rest) > 0; rest = rest[4:] {
			if len(rest) < 4 || rest[0] != "--slave" {
				return nil, fmt.Errorf("%s:%d: want --slave LINK NAME PATH, got %q", script, i+1, strings.Join(rest, " "))
			}
			alt.links = append(alt.links, altLink{rest[1], rest[2], rest[3]})
		}
		out = append(out, alt)
	}
	return out, nil
}

// installAlternatives makes the links update-alternatives makes in auto
// mode for the groups of every var/lib/dpkg/info/*.postinst: per name the
// group of the highest priority wins (the first script in name order on a
// tie); LINK -> /etc/alternatives/NAME -> PATH. As update-alternatives
// does, a slave whose path is not in the image (a man page the image
// leaves out) gets no link; a master whose path is missing is an error.
func (t fileTree) installAlternatives() error {
	var scripts []string
	for n := range t {
		if path.Dir(n) == "var/lib/dpkg/info" && strings.HasSuffix(n, ".postinst") {
			scripts = append(scripts, n)
		}
	}
	sort.Strings(scripts)
	best := map[string]alternative{}
	var names []string
	for _, s := range scripts {
		alts, err := parseAlternatives(s, string(t[s].data))
		if err != nil {
			return err
		}
		for _, a := range alts {
			name := a.links[0].name
			cur, ok := best[name]
			if !ok {
				names = append(names, name)
			}
			if !ok || a.priority > cur.priority {
				best[name] = a
			}
		}
	}
	if len(names) > 0 {
		t.addDir("etc/alternatives", 0o755)
	}
	for _, name := range names {
		a := best[name]
		for i, l := range a.links {
			if _, _, err := t.resolve(l.path); err != nil {
				if i == 0 {
					return fmt.Errorf("alternative %s from %s: %w", name, a.script, err)
				}
				continue
			}
			link := cleanName(l.link)
			if e, ok := t[link]; ok && e.hdr.Typeflag != tar.TypeSymlink {
				return fmt.Errorf("alternative %s from %s: %s is a file of a package, not a link to make", l.name, a.script, l.link)
			}
			t.addSymlink(link, "/etc/alternatives/"+l.name)
			t.addSymlink("etc/alternatives/"+l.name, l.path)
		}
	}
	return nil
}
