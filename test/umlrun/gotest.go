package umlrun

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestBinary reruns single tests of the running test binary's package inside a
// guest, for a test that needs what only the guest gives (see Rerun). Make one in
// the parent test and call Rerun from its subtests.
type TestBinary struct {
	t    testing.TB
	once sync.Once
	path string
	err  error
}

// NewTestBinary returns the test binary for guests of the test t and its subtests.
func NewTestBinary(t testing.TB) *TestBinary { return &TestBinary{t: t} }

// binary returns the test binary the guest runs: this very one, or, when it was built
// with the race detector (`make test`), whose runtime does not start in a guest, the
// same package's tests built without it (go test -c, once per TestBinary, into the
// parent test's temporary directory).
func (b *TestBinary) binary() (string, error) {
	b.once.Do(func() {
		if !raceEnabled {
			b.path, b.err = os.Executable()
			return
		}
		gotool, err := exec.LookPath("go")
		if err != nil {
			b.err = fmt.Errorf("this test binary has the race detector, which cannot run in a guest, and no go tool to build one without it: %w", err)
			return
		}
		b.path = filepath.Join(b.t.TempDir(), "guest.test")
		start := time.Now()
		out, err := exec.Command(gotool, "test", "-c", "-o", b.path, ".").CombinedOutput() // the working directory is the package's
		if err != nil {
			b.err = fmt.Errorf("building the tests without the race detector for the guest: %w\n%s", err, out)
			return
		}
		b.t.Logf("umlrun: built the package's tests without the race detector for the guest in %.1fs", time.Since(start).Seconds())
	})
	return b.path, b.err
}

// Rerun runs the test t (by its full name: exactly this subtest) again in a guest,
// with -test.v, logs what it printed there, and fails t unless it passed there:
// ran, was not skipped, reported PASS. The guest's run sees GuestEnv=1 (InGuest)
// and the host's CI variable. It returns the guest's result.
func (b *TestBinary) Rerun(t *testing.T, opts Options) Result {
	t.Helper()
	Require(t)
	bin, err := b.binary()
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
		opts.Timeout = timeout
	}
	if ci, ok := os.LookupEnv("CI"); ok {
		opts.Env = append(opts.Env, "CI="+ci)
	}
	script := fmt.Sprintf("exec %s -test.run %s -test.count=1 -test.v -test.timeout=%s 2>&1\n",
		shellQuote(bin), shellQuote(strings.Join(parts, "/")), timeout-10*time.Second)
	res := Run(t, script, opts)
	t.Logf("in a User-Mode Linux guest (%.1fs, boot included), exit %d:\n%s", res.Took.Seconds(), res.ExitCode, strings.TrimRight(res.Stdout, "\n"))
	passed := regexp.MustCompile(`(?m)^\s*--- PASS: ` + regexp.QuoteMeta(t.Name()) + ` \(`)
	if !res.Success() || !passed.MatchString(res.Stdout) {
		t.Errorf("%s did not pass in the guest (exit %d; see its output above)\nguest console:\n%s", t.Name(), res.ExitCode, tail(res.Console))
	}
	return res
}
