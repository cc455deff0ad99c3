package demo

import (
	"errors"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// The runner turns the helpers' Fatalf and Skipf into errors, runs the cleanups last
// first (also after a Fatalf), and reports Errorf when it finishes.
func TestRunner(t *testing.T) {
	tests := []struct {
		name       string
		fn         func(r *runner)
		wantGuard  string // "" = no error
		wantNoEmu  bool
		wantFinish string
	}{
		{name: "fine", fn: func(r *runner) { r.Helper(); r.Logf("hello %d", 1) }},
		{name: "fatal", fn: func(r *runner) { r.Fatalf("creating subnet %s: %v", "10.0.1.0/24", "boom"); panic("not reached") },
			wantGuard: "creating subnet 10.0.1.0/24: boom"},
		{name: "skip means no emulator", fn: func(r *runner) { r.Skipf("moto_server not found") },
			wantGuard: "moto_server not found", wantNoEmu: true},
		{name: "error at cleanup", fn: func(r *runner) { r.Cleanup(func() { r.Errorf("forbidden calls %v", []string{"DeleteVolume"}) }) },
			wantFinish: "forbidden calls [DeleteVolume]"},
		{name: "fatal at cleanup", fn: func(r *runner) { r.Cleanup(func() { r.Fatalf("stopping moto: %s", "stuck") }) },
			wantFinish: "cleanup: stopping moto: stuck"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRunner(nil)
			var order []int
			r.Cleanup(func() { order = append(order, 1) })
			r.Cleanup(func() { order = append(order, 2) })
			err := r.guard(func() { tt.fn(r) })
			if (err == nil) != (tt.wantGuard == "") || (err != nil && !strings.Contains(err.Error(), tt.wantGuard)) {
				t.Errorf("guard: %v, want %q", err, tt.wantGuard)
			}
			if errors.Is(err, ErrNoEmulator) != tt.wantNoEmu {
				t.Errorf("guard: %v; ErrNoEmulator %v, want %v", err, errors.Is(err, ErrNoEmulator), tt.wantNoEmu)
			}
			ferr := r.finish()
			if (ferr == nil) != (tt.wantFinish == "") || (ferr != nil && !strings.Contains(ferr.Error(), tt.wantFinish)) {
				t.Errorf("finish: %v, want %q", ferr, tt.wantFinish)
			}
			if !slices.Equal(order, []int{2, 1}) {
				t.Errorf("cleanups ran in order %v, want [2 1]", order)
			}
			if r.Context().Err() == nil {
				t.Error("the context is not cancelled after finish")
			}
		})
	}
}

// action names the operation of every AWS protocol the functions use.
func TestAction(t *testing.T) {
	tests := []struct {
		method, path, target, body, want string
	}{
		{"POST", "/", "DynamoDB_20120810.UpdateItem", `{}`, "UpdateItem"},
		{"POST", "/", "AmazonSSM.SendCommand", `{}`, "SendCommand"},
		{"POST", "/", "", "Action=AttachVolume&Version=2016-11-15&VolumeId=vol-1", "AttachVolume"},
		{"POST", "/", "", "Action=CompleteLifecycleAction&Version=2011-01-01", "CompleteLifecycleAction"},
		{"POST", "/2013-04-01/hostedzone/Z1/rrset", "", "<xml/>", "ChangeResourceRecordSets"},
		{"GET", "/2013-04-01/hostedzone/Z1/rrset", "", "", "ListResourceRecordSets"},
		{"POST", "/service/GraniteServiceVersion20100801/operation/PutMetricAlarm", "", "", "PutMetricAlarm"},
		{"GET", "/elsewhere", "", "", "GET /elsewhere"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
		if tt.target != "" {
			r.Header.Set("X-Amz-Target", tt.target)
		}
		if got := action(r, []byte(tt.body)); got != tt.want {
			t.Errorf("action(%s %s %q) = %q, want %q", tt.method, tt.path, tt.target, got, tt.want)
		}
	}
	for op, want := range map[string]bool{"AttachVolume": true, "DescribeVolumes": false, "RecordLifecycleActionHeartbeat": true, "GetItem": false, "Publish": true} {
		if isWrite(op) != want {
			t.Errorf("isWrite(%s) = %v", op, !want)
		}
	}
}
