package demo

import (
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// The teardown runs the cleanups last first and reports the problems recorded during
// the run and by the cleanups.
func TestTeardown(t *testing.T) {
	tests := []struct {
		name       string
		fn         func(r *teardown)
		wantFinish string // "" = no error
	}{
		{name: "fine", fn: func(*teardown) {}},
		{name: "error during the run", fn: func(r *teardown) { r.Errorf("stopping broker %d: %s", 1, "boom") },
			wantFinish: "stopping broker 1: boom"},
		{name: "error at cleanup", fn: func(r *teardown) { r.Cleanup(func() { r.Errorf("forbidden calls %v", []string{"DeleteVolume"}) }) },
			wantFinish: "forbidden calls [DeleteVolume]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &teardown{}
			var order []int
			r.Cleanup(func() { order = append(order, 1) })
			r.Cleanup(func() { order = append(order, 2) })
			tt.fn(r)
			ferr := r.finish()
			if (ferr == nil) != (tt.wantFinish == "") || (ferr != nil && !strings.Contains(ferr.Error(), tt.wantFinish)) {
				t.Errorf("finish: %v, want %q", ferr, tt.wantFinish)
			}
			if !slices.Equal(order, []int{2, 1}) {
				t.Errorf("cleanups ran in order %v, want [2 1]", order)
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
