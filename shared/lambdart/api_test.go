package lambdart

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Runtime API's answers, driven over HTTP without a process: the next invocation
// with its headers, results for the invocation in progress only, and the errors.
func TestRuntimeAPIProtocol(t *testing.T) {
	f := &Function{Name: "launch", Timeout: 30 * time.Second}
	e := newEnvironment(f, 1)
	srv := httptest.NewServer(e.routes())
	defer srv.Close()

	inv := &invocation{id: "req-1", payload: []byte(`{"detail":{}}`), traceID: "Root=1-x;Sampled=0",
		handed: make(chan struct{}), answered: make(chan struct{})}
	go func() { e.next <- inv }()
	before := time.Now()
	resp, err := http.Get(srv.URL + pathNext)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	deadline, _ := strconv.ParseInt(resp.Header.Get(HeaderDeadlineMS), 10, 64)
	if resp.StatusCode != http.StatusOK || resp.Header.Get(HeaderRequestID) != "req-1" ||
		resp.Header.Get(HeaderFunctionARN) != "arn:aws:lambda:us-east-1:123456789012:function:launch" ||
		resp.Header.Get(HeaderTraceID) != "Root=1-x;Sampled=0" ||
		time.UnixMilli(deadline).Before(before.Add(29*time.Second)) {
		t.Fatalf("GET next: %d %v", resp.StatusCode, resp.Header)
	}

	tests := []struct {
		name, method, path, body string
		wantCode                 int
		wantType                 string
	}{
		{"result for another invocation", "POST", pathInvocation + "req-0/response", `{}`, 400, "InvalidRequestID"},
		{"wrong method", "GET", pathInvocation + "req-1/response", ``, 405, ""},
		{"unknown path", "POST", apiPrefix + "invocation/req-1/other", `{}`, 404, ""},
		{"the error of the invocation", "POST", pathInvocation + "req-1/error", `{"errorMessage":"boom","errorType":"Kaboom"}`, 202, ""},
		{"a second answer", "POST", pathInvocation + "req-1/response", `{}`, 400, "InvalidRequestID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(tt.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var ae apiError
			_ = json.NewDecoder(resp.Body).Decode(&ae)
			if resp.StatusCode != tt.wantCode || ae.Type != tt.wantType {
				t.Errorf("%s %s: %d %q, want %d %q", tt.method, tt.path, resp.StatusCode, ae.Type, tt.wantCode, tt.wantType)
			}
		})
	}
	select {
	case <-inv.answered:
		if inv.err == nil || inv.err.Type != "Kaboom" || inv.err.Message != "boom" {
			t.Errorf("recorded error %+v", inv.err)
		}
	default:
		t.Error("the invocation was not answered")
	}
}

func TestParseFunctionError(t *testing.T) {
	tests := []struct {
		body, header string
		want         FunctionError
	}{
		{`{"errorMessage":"m","errorType":"T"}`, "", FunctionError{Type: "T", Message: "m"}},
		{`{"errorMessage":"m"}`, "Runtime.Custom", FunctionError{Type: "Runtime.Custom", Message: "m"}},
		{`not json`, "", FunctionError{Type: "Unhandled", Message: "not json"}},
		{``, "", FunctionError{Type: "Unhandled"}},
	}
	for _, tt := range tests {
		got := parseFunctionError([]byte(tt.body), tt.header)
		if got.Type != tt.want.Type || got.Message != tt.want.Message {
			t.Errorf("parseFunctionError(%q, %q) = %+v, want %+v", tt.body, tt.header, *got, tt.want)
		}
	}
}
