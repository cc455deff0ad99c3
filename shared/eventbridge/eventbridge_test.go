package eventbridge

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestDecodeSampleEnvelopes(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "events", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no sample events: %v", err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var e Envelope
		if err := Decode(raw, &e); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if e.Source == "" {
			t.Errorf("%s: no source", f)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	var e Envelope
	if err := Decode([]byte(`{"source":"a"} {}`), &e); !errors.Is(err, ErrTrailingData) {
		t.Errorf("two values: %v", err)
	}
	if err := Decode([]byte(`{"source":`), &e); err == nil {
		t.Error("truncated: no error")
	}
	if err := Decode([]byte(`{"source":"a"}`), &e); err != nil || e.HasDetail() {
		t.Errorf("no detail: err %v, HasDetail %v", err, e.HasDetail())
	}
}
