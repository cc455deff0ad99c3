package slotctl_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/obs"
)

func TestMain(m *testing.M) {
	// The launch handler that sets the fixtures up runs outside a Lambda segment:
	// trace nothing, log nothing about it.
	if err := obs.ConfigureTracing(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
