package harness

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// ModulePath is the module whose root RepoRoot looks for.
const ModulePath = "github.com/filter-milter/filter-milter"

// RepoRoot returns the module's root directory: the first directory, from
// the working directory upwards, whose go.mod declares ModulePath; failing
// that, the one above this source file.
func RepoRoot(tb TB) string {
	tb.Helper()
	if wd, err := os.Getwd(); err == nil {
		if d := findModuleRoot(wd); d != "" {
			return d
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		if d := findModuleRoot(filepath.Dir(file)); d != "" {
			return d
		}
	}
	tb.Fatalf("harness: cannot find the root of module %s from the working directory", ModulePath)
	return ""
}

func findModuleRoot(dir string) string {
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				line := strings.TrimSpace(sc.Text())
				if strings.HasPrefix(line, "module ") {
					if strings.Trim(strings.TrimSpace(strings.TrimPrefix(line, "module")), `"`) == ModulePath {
						f.Close()
						return dir
					}
					break
				}
			}
			f.Close()
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  string
)

// BuildFilterMilter builds ./cmd/filter-milter once per process into a 0755
// temporary directory (the filter proc runs as user opensmtpd, which must be
// able to execute it) and returns the binary's path. When the harness itself
// is built with -race, so is filter-milter, and StopAndCheck fails the test
// on a race report in smtpd's log (where the filter's stderr goes).
// Call RemoveBuild at the end of TestMain or of the demo.
func BuildFilterMilter(tb TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		root := RepoRoot(tb)
		dir, err := os.MkdirTemp(TempBase(), "filter-milter-bin-")
		if err != nil {
			buildErr = "harness: " + err.Error()
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = "harness: " + err.Error()
			return
		}
		buildDir = dir
		bin := filepath.Join(dir, "filter-milter")
		// -buildvcs=false: a clone on a CI machine without git must build too.
		args := []string{"build", "-buildvcs=false", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./cmd/filter-milter")
		gobin, err := exec.LookPath("go")
		if err != nil {
			gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		cmd := exec.Command(gobin, args...)
		cmd.Dir = root
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			buildErr = "harness: `go " + strings.Join(args, " ") + "` in " + root + " failed: " + err.Error() + "\n" + out.String()
			return
		}
		if err := os.Chmod(bin, 0o755); err != nil {
			buildErr = "harness: " + err.Error()
			return
		}
		buildBin = bin
		tb.Logf("harness: built %s (race=%v) in %v", bin, raceEnabled, time.Since(start).Round(time.Millisecond))
	})
	if buildErr != "" {
		tb.Fatalf("%s", buildErr)
	}
	return buildBin
}

// RemoveBuild removes the directory BuildFilterMilter built into.
func RemoveBuild() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// RaceEnabled reports whether filter-milter is built with -race.
func RaceEnabled() bool { return raceEnabled }
