package emulator

import (
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIdentify(t *testing.T) {
	auth := func(service string) string {
		return "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/" + service +
			"/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc"
	}
	tests := []struct {
		name         string
		method, path string
		header       map[string]string
		body         string
		wantService  string
		wantProtocol wireProtocol
		wantAction   string
	}{
		{
			name: "ec2 query", method: "POST", path: "/",
			header:      map[string]string{"Authorization": auth("ec2"), "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
			body:        "Action=CreateVolume&Version=2016-11-15&Size=10",
			wantService: "ec2", wantProtocol: protocolQuery, wantAction: "CreateVolume",
		},
		{
			name: "autoscaling query", method: "POST", path: "/",
			header:      map[string]string{"Authorization": auth("autoscaling"), "Content-Type": "application/x-www-form-urlencoded"},
			body:        "Action=CompleteLifecycleAction&Version=2011-01-01",
			wantService: "autoscaling", wantProtocol: protocolQuery, wantAction: "CompleteLifecycleAction",
		},
		{
			name: "query action in the URL", method: "GET", path: "/?Action=GetCallerIdentity&Version=2011-06-15",
			header:      map[string]string{"Authorization": auth("sts")},
			wantService: "sts", wantProtocol: protocolQuery, wantAction: "GetCallerIdentity",
		},
		{
			name: "dynamodb json", method: "POST", path: "/",
			header:      map[string]string{"Authorization": auth("dynamodb"), "X-Amz-Target": "DynamoDB_20120810.UpdateItem"},
			body:        `{"TableName":"t"}`,
			wantService: "dynamodb", wantProtocol: protocolJSON, wantAction: "UpdateItem",
		},
		{
			name: "ssm json", method: "POST", path: "/",
			header:      map[string]string{"Authorization": auth("ssm"), "X-Amz-Target": "AmazonSSM.SendCommand"},
			wantService: "ssm", wantProtocol: protocolJSON, wantAction: "SendCommand",
		},
		{
			name: "cloudwatch cbor", method: "POST", path: "/service/GraniteServiceVersion20100801/operation/PutMetricAlarm",
			header:      map[string]string{"Authorization": auth("monitoring"), "Smithy-Protocol": "rpc-v2-cbor"},
			wantService: "monitoring", wantProtocol: protocolCBOR, wantAction: "PutMetricAlarm",
		},
		{
			name: "route53 change rrset", method: "POST", path: "/2013-04-01/hostedzone/Z123/rrset",
			header:      map[string]string{"Authorization": auth("route53")},
			wantService: "route53", wantProtocol: protocolRESTXML, wantAction: "ChangeResourceRecordSets",
		},
		{
			name: "route53 change rrset, trailing slash", method: "POST", path: "/2013-04-01/hostedzone/Z123/rrset/",
			header:      map[string]string{"Authorization": auth("route53")},
			wantService: "route53", wantProtocol: protocolRESTXML, wantAction: "ChangeResourceRecordSets",
		},
		{
			name: "route53 list rrsets", method: "GET", path: "/2013-04-01/hostedzone/Z123/rrset?name=a.example.com",
			header:      map[string]string{"Authorization": auth("route53")},
			wantService: "route53", wantProtocol: protocolRESTXML, wantAction: "ListResourceRecordSets",
		},
		{
			name: "route53 create zone", method: "POST", path: "/2013-04-01/hostedzone",
			header:      map[string]string{"Authorization": auth("route53")},
			wantService: "route53", wantProtocol: protocolRESTXML, wantAction: "CreateHostedZone",
		},
		{
			name: "route53 list zones", method: "GET", path: "/2013-04-01/hostedzone",
			header:      map[string]string{"Authorization": auth("route53")},
			wantService: "route53", wantProtocol: protocolRESTXML, wantAction: "ListHostedZones",
		},
		{
			name: "route53 get zone", method: "GET", path: "/2013-04-01/hostedzone/Z123",
			header:      map[string]string{"Authorization": auth("route53")},
			wantService: "route53", wantProtocol: protocolRESTXML, wantAction: "GetHostedZone",
		},
		{
			name: "route53 delete zone", method: "DELETE", path: "/2013-04-01/hostedzone/Z123",
			header:      map[string]string{"Authorization": auth("route53")},
			wantService: "route53", wantProtocol: protocolRESTXML, wantAction: "DeleteHostedZone",
		},
		{
			name: "route53 get change", method: "GET", path: "/2013-04-01/change/C123",
			header:      map[string]string{"Authorization": auth("route53")},
			wantService: "route53", wantProtocol: protocolRESTXML, wantAction: "GetChange",
		},
		{
			name: "route53 unmapped", method: "GET", path: "/2013-04-01/hostedzonecount",
			header:      map[string]string{"Authorization": auth("route53")},
			wantService: "route53", wantProtocol: protocolRESTXML, wantAction: "Route53:GET/2013-04-01/hostedzonecount",
		},
		{
			name: "unknown protocol", method: "PUT", path: "/bucket/key",
			header:      map[string]string{"Authorization": auth("s3")},
			wantService: "s3", wantProtocol: protocolUnknown, wantAction: "s3:PUT/bucket/key",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			got := identify(r, []byte(tc.body))
			if got.service != tc.wantService || got.protocol != tc.wantProtocol || got.action != tc.wantAction {
				t.Errorf("identify = (service %q, protocol %d, action %q), want (%q, %d, %q)",
					got.service, got.protocol, got.action, tc.wantService, tc.wantProtocol, tc.wantAction)
			}
		})
	}
}

func TestIsMutating(t *testing.T) {
	tests := []struct {
		action string
		want   bool
	}{
		{"CreateVolume", true},
		{"AttachNetworkInterface", true},
		{"CompleteLifecycleAction", true},
		{"RecordLifecycleActionHeartbeat", true},
		{"ChangeResourceRecordSets", true},
		{"TransactWriteItems", true},
		{"SendCommand", true},
		{"PutMetricAlarm", true},
		{"DescribeVolumes", false},
		{"GetItem", false},
		{"ListResourceRecordSets", false},
		{"Query", false},
		{"Route53:GET/2013-04-01/hostedzonecount", false},
	}
	for _, tc := range tests {
		if got := isMutating(tc.action); got != tc.want {
			t.Errorf("isMutating(%q) = %v, want %v", tc.action, got, tc.want)
		}
	}
}

func TestInjectRejectsInvalidFaults(t *testing.T) {
	tests := []struct {
		name  string
		fault Fault
	}{
		{"empty action", Fault{Kind: Throttle}},
		{"unknown kind", Fault{Action: "*", Kind: FaultKind(42)}},
		{"negative times", Fault{Action: "*", Times: -1}},
		{"negative skip", Fault{Action: "*", Skip: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &Emulator{}
			defer func() {
				if recover() == nil {
					t.Errorf("Inject(%+v) did not panic", tc.fault)
				}
				if len(h.faults) != 0 {
					t.Errorf("invalid fault was stored")
				}
			}()
			h.Inject(tc.fault)
		})
	}
}

func TestFindMotoServer(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "moto_server")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	notExecutable := filepath.Join(dir, "plain")
	if err := os.WriteFile(notExecutable, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	venv := filepath.Join(root, ".venv", "bin", "moto_server")

	tests := []struct {
		name string
		env  string
		want string
	}{
		{name: "explicit executable", env: script, want: script},
		{name: "explicit but missing: no fallback", env: filepath.Join(dir, "missing"), want: ""},
		{name: "explicit but not executable", env: notExecutable, want: ""},
		{name: "default is the repo venv", env: "", want: venv},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == venv && !isExecutableFile(venv) {
				t.Skipf("%s does not exist", venv)
			}
			t.Setenv(motoEnvVar, tc.env)
			if got, tried := findMotoServer(); got != tc.want {
				t.Errorf("findMotoServer() = %q (tried %v), want %q", got, tried, tc.want)
			}
		})
	}
}

// Without moto_server, Start says where it looked and wraps ErrNoMoto; nothing is left
// running.
func TestStartWithoutMoto(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-moto_server")
	t.Setenv(motoEnvVar, missing)
	e, err := Start()
	if e != nil || !errors.Is(err, ErrNoMoto) {
		t.Fatalf("Start() = %v, %v; want nil, ErrNoMoto", e, err)
	}
	for _, want := range []string{missing, "make test", motoEnvVar} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
