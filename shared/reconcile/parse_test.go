package reconcile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseTriggers(t *testing.T) {
	tests := []struct {
		file string
		ok   bool
	}{
		{"schedule.json", true}, {"state-change-terminated.json", true},
		{"state-change-running.json", false}, {"state-change-stopping.json", false},
		{"launch-lifecycle.json", false}, {"alarm-action.json", false},
	}
	for _, tt := range tests {
		raw, err := os.ReadFile(filepath.Join("..", "..", "events", tt.file))
		if err != nil {
			t.Fatal(err)
		}
		ok, what, err := Parse(raw)
		if err != nil || ok != tt.ok || what == "" {
			t.Errorf("%s: ok=%v what=%q err=%v, want ok=%v with a description", tt.file, ok, what, err, tt.ok)
		}
	}
}

// A terminated event names its instance, for the check against the leases; the
// schedule names none.
func TestParseTriggerInstance(t *testing.T) {
	for file, want := range map[string]string{"schedule.json": "", "state-change-terminated.json": "i-0123456789abcdef0"} {
		raw, err := os.ReadFile(filepath.Join("..", "..", "events", file))
		if err != nil {
			t.Fatal(err)
		}
		tr, err := ParseTrigger(raw)
		if err != nil || !tr.OK || tr.Instance != want {
			t.Errorf("%s: %+v, %v; want instance %q", file, tr, err, want)
		}
	}
}

func FuzzReconcileParse(f *testing.F) {
	for _, name := range []string{"schedule.json", "state-change-terminated.json", "state-change-running.json", "launch-lifecycle.json"} {
		if b, err := os.ReadFile(filepath.Join("..", "..", "events", name)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ok, what, err := Parse(raw)
		if err != nil && ok {
			t.Fatal("ok with an error")
		}
		if err == nil && !ok && what == "" {
			t.Fatal("a no-op without a reason")
		}
	})
}
