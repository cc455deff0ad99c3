package dns

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readEvent(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "events", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseSampleEvents(t *testing.T) {
	for _, state := range []string{"running", "stopping", "shutting-down", "terminated"} {
		t.Run(state, func(t *testing.T) {
			e, err := ParseStateChange(readEvent(t, "state-change-"+state+".json"))
			if err != nil {
				t.Fatal(err)
			}
			if ok, why := e.Relevant(); !ok {
				t.Fatalf("sample not relevant: %s", why)
			}
			if e.InstanceID != "i-0123456789abcdef0" || e.State != state || e.ID == "" {
				t.Errorf("parsed %+v", e)
			}
		})
	}
}

func mutate(t *testing.T, f func(m map[string]any)) []byte {
	var m map[string]any
	if err := json.Unmarshal(readEvent(t, "state-change-running.json"), &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, _ := json.Marshal(m)
	return b
}

func detail(m map[string]any) map[string]any { return m["detail"].(map[string]any) }

func TestParseRejectsAndIgnores(t *testing.T) {
	sample := readEvent(t, "state-change-running.json")
	tests := []struct {
		name      string
		raw       []byte
		malformed string // substring of the error; "" = parses
		relevant  string // substring of Relevant's reason; "" = relevant
	}{
		{"sample", sample, "", ""},
		{"not json", []byte("instance i-1 is running"), "malformed", ""},
		{"empty", nil, "malformed", ""},
		{"JSON array", []byte(`[1,2]`), "malformed", ""},
		{"truncated", sample[:len(sample)/2], "malformed", ""},
		{"trailing data", append(append([]byte{}, sample...), "{}"...), "trailing", ""},
		{"no detail", mutate(t, func(m map[string]any) { delete(m, "detail") }), "no detail", ""},
		{"detail is a string", mutate(t, func(m map[string]any) { m["detail"] = "running" }), "detail", ""},
		{"no instance id", mutate(t, func(m map[string]any) { delete(detail(m), "instance-id") }), "instance-id", ""},
		{"bad instance id", mutate(t, func(m map[string]any) { detail(m)["instance-id"] = "i-XYZ; rm -rf" }), "instance-id", ""},
		{"instance id not a string", mutate(t, func(m map[string]any) { detail(m)["instance-id"] = 7 }), "detail", ""},
		{"no state", mutate(t, func(m map[string]any) { delete(detail(m), "state") }), "lacks state", ""},
		{"pending", mutate(t, func(m map[string]any) { detail(m)["state"] = "pending" }), "", `state "pending"`},
		{"stopped", mutate(t, func(m map[string]any) { detail(m)["state"] = "stopped" }), "", `state "stopped"`},
		{"unknown state", mutate(t, func(m map[string]any) { detail(m)["state"] = "exploded" }), "", `state "exploded"`},
		{"other source", readEvent(t, "schedule.json"), "", "source"},
		{"lifecycle event", readEvent(t, "launch-lifecycle.json"), "", "source"},
		{"other EC2 detail type, other detail shape", mutate(t, func(m map[string]any) {
			m["detail-type"], m["detail"] = "EBS Volume Notification", map[string]any{"event": "createVolume"}
		}), "", "detail-type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := ParseStateChange(tt.raw)
			if tt.malformed != "" {
				if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.malformed) {
					t.Fatalf("error %v, want ErrMalformed mentioning %q", err, tt.malformed)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ok, why := e.Relevant()
			if tt.relevant == "" && !ok {
				t.Errorf("not relevant: %s", why)
			}
			if tt.relevant != "" && (ok || !strings.Contains(why, tt.relevant)) {
				t.Errorf("Relevant = %v, %q; want false mentioning %q", ok, why, tt.relevant)
			}
		})
	}
}

func FuzzParseStateChange(f *testing.F) {
	entries, err := os.ReadDir(filepath.Join("..", "..", "events"))
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			f.Add(readEvent(f, e.Name()))
		}
	}
	f.Add([]byte(`{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","detail":null}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := ParseStateChange(raw)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		ok, why := e.Relevant()
		if ok {
			// Whatever is acted on names a real instance and a handled state.
			if !instanceIDRE.MatchString(e.InstanceID) || !handledStates[e.State] {
				t.Fatalf("relevant event with instance %q, state %q", e.InstanceID, e.State)
			}
		} else if why == "" {
			t.Fatal("irrelevant event without a reason")
		}
	})
}
