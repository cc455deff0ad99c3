package emulator

import (
	"bytes"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"time"
)

// wireProtocol is the AWS protocol a request was made in; it decides how the action
// is read and how error responses are written.
type wireProtocol int

const (
	protocolUnknown wireProtocol = iota
	protocolQuery                // awsquery and ec2query: form body with Action=...
	protocolJSON                 // awsJson1_0 / awsJson1_1: X-Amz-Target
	protocolCBOR                 // Smithy RPC v2 CBOR: /service/S/operation/Op
	protocolRESTXML              // Route 53
)

// call is what the proxy learnt about one request.
type call struct {
	service     string // SigV4 signing name from the credential scope, e.g. "ec2"
	protocol    wireProtocol
	action      string     // e.g. "CreateVolume"
	form        url.Values // the query-protocol parameters (protocolQuery only)
	contentType string     // the request's Content-Type
}

// mutatingPrefixes are the action-name prefixes counted by MutatingCalls.
var mutatingPrefixes = []string{
	"Create", "Delete", "Attach", "Detach", "Modify", "Put", "Update", "Run", "Terminate",
	"Complete", "Record", "Send", "Change", "Associate", "Disassociate", "BatchWrite",
	"TransactWrite", "Start", "Stop", "Reboot", "Set", "Release", "Allocate", "Assign",
	"Unassign", "Replace", "Cancel", "Register", "Deregister", "Enable", "Disable", "Tag",
	"Untag", "Execute",
}

func isMutating(action string) bool {
	for _, p := range mutatingPrefixes {
		if strings.HasPrefix(action, p) {
			return true
		}
	}
	return false
}

// serveHTTP is the proxy: identify the call, count it, apply the first matching fault,
// then answer it (moto, or the lifecycle emulation).
func (e *Emulator) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/moto-api/") {
		e.forward.ServeHTTP(w, r) // moto's own control API: not an AWS call
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "emulator proxy: reading request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	_ = r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))

	c := identify(r, body)
	fault, faulted := e.record(c.action, body)

	next := e.modelled(c, e.forward.ServeHTTP)
	if c.protocol == protocolQuery && isLifecycleAction(c.action) {
		next = func(w http.ResponseWriter, _ *http.Request) { e.serveLifecycle(w, c) }
	}
	if c.service == "dynamodb" && isMutating(c.action) {
		// DynamoDB evaluates a write's condition and applies the write atomically.
		// moto's threaded server does not: two conditional writes racing on one item
		// can both pass their condition. Serialising writes restores the guarantee
		// the lease store's fencing relies on.
		base := next
		next = func(w http.ResponseWriter, r *http.Request) {
			e.dynamoWrites.Lock()
			defer e.dynamoWrites.Unlock()
			base(w, r)
		}
	}
	if c.protocol == protocolRESTXML && c.action == "ChangeResourceRecordSets" {
		base := next
		next = func(w http.ResponseWriter, r *http.Request) { e.route53Change(w, r, c, body, base) }
	}
	if token := c.form.Get("ClientToken"); c.protocol == protocolQuery && c.service == "ec2" && token != "" {
		base := next
		next = func(w http.ResponseWriter, r *http.Request) { e.idempotent(w, r, c.action+"/"+token, base) }
	}
	next = e.withLatency(c, body, next)
	if !faulted {
		next(w, r)
		return
	}

	switch fault.Kind {
	case Throttle, ServerError:
		e.writeFault(w, c, fault, "") // answered here: moto never sees the call
	case Latency:
		select {
		case <-time.After(fault.Latency):
			next(w, r)
		case <-r.Context().Done(): // the client gave up or the emulator is stopping
		}
	case Crash, LostResponse:
		rec := httptest.NewRecorder()
		next(rec, r)
		if rec.Code/100 != 2 {
			// The call failed on its own, so nothing happened that the crash could hide:
			// pass the real failure on.
			copyResponse(w, rec)
			return
		}
		if fault.Kind == LostResponse {
			e.writeFault(w, c, fault, "injected lost response: the call took effect at the server, but its response was lost")
			return
		}
		e.writeFault(w, c, fault, "injected crash: the call took effect at the server, but its response was discarded")
	}
}

// record counts the call and returns the fault to apply to it, if any.
func (e *Emulator) record(action string, body []byte) (Fault, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.counts[action]++
	e.sequence = append(e.sequence, action)
	if isMutating(action) {
		if e.bodies == nil {
			e.bodies = map[string][][]byte{}
		}
		e.bodies[action] = append(e.bodies[action], body)
	}
	if forbiddenActions[action] {
		e.forbidden = append(e.forbidden, action)
	}
	if isMutating(action) {
		e.mutating = append(e.mutating, action)
	}
	return e.matchFault(action)
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	maps.Copy(w.Header(), rec.Header())
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// identify works out the service, protocol and action of an AWS SDK request.
func identify(r *http.Request, body []byte) call {
	c := call{service: signingService(r), contentType: r.Header.Get("Content-Type")}
	switch {
	case r.Header.Get("X-Amz-Target") != "":
		// awsJson: X-Amz-Target: DynamoDB_20120810.PutItem
		target := r.Header.Get("X-Amz-Target")
		c.protocol = protocolJSON
		c.action = target[strings.LastIndex(target, ".")+1:]
	case strings.HasPrefix(r.URL.Path, "/service/") && strings.Contains(r.URL.Path, "/operation/"):
		// rpcv2Cbor: POST /service/GraniteServiceVersion20100801/operation/PutMetricAlarm
		c.protocol = protocolCBOR
		c.action = path.Base(r.URL.Path)
	case c.service == "route53":
		c.protocol = protocolRESTXML
		c.action = route53Action(r.Method, r.URL.Path)
	default:
		form := queryParams(r, body)
		if action := form.Get("Action"); action != "" {
			c.protocol = protocolQuery
			c.action = action
			c.form = form
		} else {
			c.action = c.service + ":" + r.Method + r.URL.Path
		}
	}
	return c
}

// signingService returns the service from the SigV4 credential scope
// (Credential=AKID/20260101/us-east-1/ec2/aws4_request), or "" if there is none.
func signingService(r *http.Request) string {
	scope := r.URL.Query().Get("X-Amz-Credential") // presigned URL
	if auth := r.Header.Get("Authorization"); auth != "" {
		_, after, ok := strings.Cut(auth, "Credential=")
		if !ok {
			return ""
		}
		scope, _, _ = strings.Cut(after, ",")
	}
	parts := strings.Split(strings.TrimSpace(scope), "/")
	if len(parts) != 5 {
		return ""
	}
	return parts[3]
}

// queryParams returns the URL query merged with a form-encoded body.
func queryParams(r *http.Request, body []byte) url.Values {
	vals := r.URL.Query()
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && mt == "application/x-www-form-urlencoded" {
		form, _ := url.ParseQuery(string(body)) // keeps what parsed before any error
		for k, v := range form {
			vals[k] = append(vals[k], v...)
		}
	}
	return vals
}

// route53Routes maps Route 53 REST paths (after /2013-04-01/, "*" = one path
// segment) to operation names.
var route53Routes = []struct{ method, pattern, action string }{
	{http.MethodPost, "hostedzone/*/rrset", "ChangeResourceRecordSets"},
	{http.MethodGet, "hostedzone/*/rrset", "ListResourceRecordSets"},
	{http.MethodPost, "hostedzone", "CreateHostedZone"},
	{http.MethodGet, "hostedzone", "ListHostedZones"},
	{http.MethodGet, "hostedzone/*", "GetHostedZone"},
	{http.MethodDelete, "hostedzone/*", "DeleteHostedZone"},
	{http.MethodGet, "change/*", "GetChange"},
}

// route53Action names the Route 53 operation of a request, or returns
// "Route53:"+method+path for one not in route53Routes.
func route53Action(method, urlPath string) string {
	if rest, ok := strings.CutPrefix(strings.TrimSuffix(urlPath, "/"), "/2013-04-01/"); ok {
		segs := strings.Split(rest, "/")
		for _, rt := range route53Routes {
			if rt.method == method && segmentsMatch(strings.Split(rt.pattern, "/"), segs) {
				return rt.action
			}
		}
	}
	return "Route53:" + method + urlPath
}

func segmentsMatch(pattern, segs []string) bool {
	if len(pattern) != len(segs) {
		return false
	}
	for i, p := range pattern {
		if segs[i] == "" || (p != "*" && p != segs[i]) {
			return false
		}
	}
	return true
}

// Calls returns how many calls of action the proxy received, faulted ones included.
// Every SDK retry attempt is a call. Actions are keyed by name only (EC2 and Auto
// Scaling both have DescribeTags, for example).
func (e *Emulator) Calls(action string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.counts[action]
}

// CallCounts returns a copy of the per-action call counts.
func (e *Emulator) CallCounts() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.counts)
}

// MutatingCalls returns the mutating actions the proxy received, in arrival order,
// faulted ones included. An action is mutating when its name starts with one of
// Create, Delete, Attach, Detach, Modify, Put, Update, Run, Terminate, Complete,
// Record, Send, Change, Associate, Disassociate, BatchWrite, TransactWrite, Start,
// Stop, Reboot, Set, Release, Allocate, Assign, Unassign, Replace, Cancel, Register,
// Deregister, Enable, Disable, Tag, Untag or Execute.
func (e *Emulator) MutatingCalls() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.mutating...)
}

// Sequence returns every action the proxy received since the last ResetCounts, in
// arrival order, faulted ones and retries included.
func (e *Emulator) Sequence() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.sequence...)
}

// ResetCounts forgets all counted calls (Calls, CallCounts, MutatingCalls, Sequence,
// Bodies). Faults, lifecycle state and recorded lifecycle calls are kept.
func (e *Emulator) ResetCounts() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.counts = map[string]int{}
	e.sequence = nil
	e.mutating = nil
	e.bodies = nil
}

// Bodies returns the request bodies of the mutating calls of action the proxy has
// received since the last ResetCounts, in arrival order (query parameters for query
// protocols, JSON for JSON protocols). Tests read what code under test sent where the
// emulator's own record is not faithful (moto's SSM ListCommands, for one, lists every
// instance as a target of a command sent to one).
func (e *Emulator) Bodies(action string) [][]byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([][]byte(nil), e.bodies[action]...)
}
