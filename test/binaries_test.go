package test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testOnlyPackages are the packages that exist for tests: they take a testing.TB or
// drive the machine's block devices. A product binary links none of them.
var testOnlyPackages = []string{
	"testing",
	"github.com/slotkeeper/slotkeeper/test/harness",
	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest",
	"github.com/slotkeeper/slotkeeper/test/realkafka/realkafkatest",
	"github.com/slotkeeper/slotkeeper/test/loopdev",
	"github.com/slotkeeper/slotkeeper/test/ssmrun",
	"github.com/slotkeeper/slotkeeper/test/umlrun",
}

// goListDeps returns the packages pkg links, as `go list -deps` sees them for the
// given environment and build tags.
func goListDeps(t *testing.T, env []string, tags, pkg string) []string {
	t.Helper()
	args := []string{"list", "-deps"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 || !slices.Contains(deps, "github.com/slotkeeper/slotkeeper/shared/config") {
		t.Fatalf("go list -deps %s found %d packages, not the product's: %q", pkg, len(deps), deps)
	}
	return deps
}

// The product binaries link no test code: not package testing, not the test
// wrappers. The functions are listed as the Makefile builds them for Lambda
// (linux/arm64, lambda.norpc) and link nothing under test/ at all; slotctl, built for
// this machine, links the emulator packages its demo runs on (test/emulator,
// test/fakekafka, test/realkafka), which are ordinary packages.
func TestProductBinariesLinkNoTestCode(t *testing.T) {
	functions, err := filepath.Glob("../functions/*/main.go")
	if err != nil || len(functions) < 5 {
		t.Fatalf("functions: %v %v", functions, err)
	}
	for _, main := range functions {
		pkg := "./" + filepath.ToSlash(filepath.Dir(main))
		t.Run(filepath.Base(filepath.Dir(main)), func(t *testing.T) {
			t.Parallel()
			deps := goListDeps(t, []string{"GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0"}, "lambda.norpc", pkg)
			for _, dep := range deps {
				if slices.Contains(testOnlyPackages, dep) || strings.HasPrefix(dep, "github.com/slotkeeper/slotkeeper/test/") {
					t.Errorf("%s links %s", pkg, dep)
				}
			}
		})
	}
	t.Run("slotctl", func(t *testing.T) {
		t.Parallel()
		deps := goListDeps(t, nil, "", "../cmd/slotctl")
		for _, dep := range deps {
			if slices.Contains(testOnlyPackages, dep) {
				t.Errorf("slotctl links %s", dep)
			}
		}
		// The check sees the demo's packages, so it looks where test code could come in.
		for _, want := range []string{"github.com/slotkeeper/slotkeeper/test/emulator", "github.com/slotkeeper/slotkeeper/shared/slotctl/demo"} {
			if !slices.Contains(deps, want) {
				t.Errorf("slotctl no longer links %s: this check looks at the wrong package", want)
			}
		}
	})
}
