package lifecycle

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
	tests := []struct {
		file, detailType, transition string
	}{
		{"launch-lifecycle.json", DetailTypeLaunch, TransitionLaunch},
		{"terminate-lifecycle.json", DetailTypeTerminate, TransitionTerminate},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			e, err := Parse(readEvent(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			hook := map[string]string{TransitionLaunch: "slotkeeper-launch", TransitionTerminate: "slotkeeper-terminate"}[tt.transition]
			if ok, why := e.Relevant(Filter{ASG: "kafka-prod", Hook: hook, DetailType: tt.detailType, Transition: tt.transition}); !ok {
				t.Fatalf("sample not relevant: %s", why)
			}
			if e.Action.EC2InstanceID != "i-0123456789abcdef0" || e.Action.LifecycleActionToken == "" || e.Action.LifecycleHookName == "" {
				t.Fatalf("fields: %+v", e.Action)
			}
			// Round trip: what we parse re-encodes to the same detail.
			var orig, again map[string]any
			_ = json.Unmarshal(e.Detail, &orig)
			b, _ := json.Marshal(e.Action)
			_ = json.Unmarshal(b, &again)
			for k, v := range orig {
				if again[k] != v {
					t.Errorf("detail field %s: %v after round trip, want %v", k, again[k], v)
				}
			}
		})
	}
}

func mutate(t *testing.T, f func(m map[string]any)) []byte {
	var m map[string]any
	if err := json.Unmarshal(readEvent(t, "launch-lifecycle.json"), &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, _ := json.Marshal(m)
	return b
}

func detail(m map[string]any) map[string]any { return m["detail"].(map[string]any) }

func TestParseRejectsAndIgnores(t *testing.T) {
	sample := readEvent(t, "launch-lifecycle.json")
	tests := []struct {
		name      string
		raw       []byte
		malformed string // substring of the error; "" = parses
		relevant  bool
		why       string // substring of the reason when not relevant
	}{
		{"sample", sample, "", true, ""},
		{"not json", []byte("hello"), "malformed", false, ""},
		{"empty", []byte(""), "malformed", false, ""},
		{"truncated", sample[:len(sample)/2], "malformed", false, ""},
		{"trailing data", append(append([]byte{}, sample...), []byte("{}")...), "trailing", false, ""},
		{"detail is a string", mutate(t, func(m map[string]any) { m["detail"] = "x" }), "detail", false, ""},
		{"no detail", mutate(t, func(m map[string]any) { delete(m, "detail") }), "no detail", false, ""},
		{"missing instance", mutate(t, func(m map[string]any) { delete(detail(m), "EC2InstanceId") }), "EC2InstanceId", false, ""},
		{"missing token and hook", mutate(t, func(m map[string]any) {
			delete(detail(m), "LifecycleActionToken")
			delete(detail(m), "LifecycleHookName")
		}), "LifecycleActionToken, LifecycleHookName", false, ""},
		{"bad instance id", mutate(t, func(m map[string]any) { detail(m)["EC2InstanceId"] = "i-; rm -rf /" }), "not an instance id", false, ""},
		{"foreign ASG", mutate(t, func(m map[string]any) { detail(m)["AutoScalingGroupName"] = "web" }), "", false, "Auto Scaling group"},
		{"foreign hook", mutate(t, func(m map[string]any) { detail(m)["LifecycleHookName"] = "web-warmup" }), "", false, `lifecycle hook "web-warmup"`},
		{"the terminate hook's name", mutate(t, func(m map[string]any) { detail(m)["LifecycleHookName"] = "slotkeeper-terminate" }), "", false, "lifecycle hook"},
		{"launch into the warm pool", mutate(t, func(m map[string]any) { detail(m)["Origin"], detail(m)["Destination"] = "EC2", "WarmPool" }), "", false, "warm pool"},
		{"launch out of the warm pool into the group", mutate(t, func(m map[string]any) { detail(m)["Origin"], detail(m)["Destination"] = "WarmPool", "AutoScalingGroup" }), "", true, ""},
		{"launch of a group without a warm pool (no origin, no destination)", mutate(t, func(m map[string]any) {
			delete(detail(m), "Origin")
			delete(detail(m), "Destination")
		}), "", true, ""},
		{"terminate transition", mutate(t, func(m map[string]any) {
			detail(m)["LifecycleTransition"] = TransitionTerminate
		}), "", false, ""},
		{"terminate detail type", mutate(t, func(m map[string]any) { m["detail-type"] = DetailTypeTerminate }), "", false, ""},
		{"foreign source", mutate(t, func(m map[string]any) { m["source"] = "aws.ec2"; m["detail"] = map[string]any{"x": 1} }), "", false, ""},
		{"test notification", mutate(t, func(m map[string]any) {
			m["detail"] = map[string]any{"LifecycleTransition": "autoscaling:TEST_NOTIFICATION", "AutoScalingGroupName": "kafka-prod"}
		}), "", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Parse(tt.raw)
			if tt.malformed != "" {
				if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.malformed) {
					t.Fatalf("err = %v, want ErrMalformed mentioning %q", err, tt.malformed)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			ok, why := e.Relevant(Filter{ASG: "kafka-prod", Hook: "slotkeeper-launch", DetailType: DetailTypeLaunch, Transition: TransitionLaunch})
			if ok != tt.relevant || (!ok && why == "") || !strings.Contains(why, tt.why) {
				t.Fatalf("Relevant = %v (%q), want %v with a reason mentioning %q when false", ok, why, tt.relevant, tt.why)
			}
		})
	}
}

// FuzzParse checks that no input panics, and that whatever Parse accepts as a relevant
// launch action carries every field needed to act on it and complete it.
func FuzzParse(f *testing.F) {
	entries, _ := os.ReadDir(filepath.Join("..", "..", "events"))
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join("..", "..", "events", e.Name())); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"source":"aws.autoscaling","detail":{}}`))
	f.Add([]byte(`{"source":"aws.autoscaling","detail":null}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := Parse(raw)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not marked malformed: %v", err)
			}
			return
		}
		f := Filter{ASG: e.Action.AutoScalingGroupName, Hook: e.Action.LifecycleHookName, DetailType: DetailTypeLaunch, Transition: TransitionLaunch}
		if ok, _ := e.Relevant(f); ok {
			a := e.Action
			if a.LifecycleActionToken == "" || a.LifecycleHookName == "" || !instanceIDRE.MatchString(a.EC2InstanceID) {
				t.Fatalf("relevant event lacks what is needed to act: %+v", a)
			}
			if a.Destination == DestinationWarmPool {
				t.Fatalf("a launch into the warm pool is relevant: %+v", a)
			}
		}
	})
}
