package harness

import (
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// InteropPackage is a Debian package an interop test runs, with a binary it
// must have.
type InteropPackage struct {
	Pkg    string // Debian package
	Binary string // absolute path of a binary it ships
}

// RequireInterop fails the test when a package's binary is missing.
func RequireInterop(tb TB, pkgs ...InteropPackage) {
	tb.Helper()
	RequireRoot(tb)
	var missing, names []string
	for _, p := range pkgs {
		if _, err := os.Stat(p.Binary); err != nil {
			missing = append(missing, p.Binary)
			names = append(names, p.Pkg)
		}
	}
	if len(missing) > 0 {
		tb.Fatalf("harness: missing %s; %s%s", strings.Join(missing, ", "), installHint, strings.Join(names, " "))
	}
}

// PackageVersion is `dpkg-query -W -f '${Version}' pkg`, or "?".
func PackageVersion(pkg string) string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
	if err != nil || len(out) == 0 {
		return "?"
	}
	return string(out)
}

// CopyInteropData copies testdata/interop/<name>/ into <dir>/<dst>/,
// replacing each key of subst by its value in every file, and returns the
// destination directory.
func CopyInteropData(tb TB, e *Env, name, dst string, subst map[string]string) string {
	tb.Helper()
	src := filepath.Join(RepoRoot(tb), "testdata", "interop", name)
	out := e.Mkdir(dst)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(out, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		s := string(b)
		for k, v := range subst {
			s = strings.ReplaceAll(s, k, v)
		}
		return os.WriteFile(target, []byte(s), 0o644)
	})
	if err != nil {
		tb.Fatalf("harness: copy %s: %v", src, err)
	}
	return out
}

// ChownTo gives path (recursively) to a system user and its primary group.
func ChownTo(tb TB, path, username string) {
	tb.Helper()
	u, err := user.Lookup(username)
	if err != nil {
		tb.Fatalf("harness: user %s: %v", username, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := chownR(path, uid, gid); err != nil {
		tb.Fatalf("harness: chown %s: %v", path, err)
	}
}
