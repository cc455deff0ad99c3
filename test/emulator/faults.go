package emulator

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/smithy-go/encoding/cbor"
)

// FaultKind is what an injected fault does to a call.
type FaultKind int

const (
	// Throttle answers the call with the service's throttling error without forwarding
	// it (no side effect). The SDK retries it.
	Throttle FaultKind = iota
	// ServerError answers the call with HTTP 503 without forwarding it (no side
	// effect). The SDK retries it.
	ServerError
	// Latency waits Fault.Latency, then lets the call through normally.
	Latency
	// Crash lets the call take effect, discards its successful response and answers
	// HTTP 400 InjectedCrash instead. The SDK does not retry it: it models a function
	// that died right after its call succeeded, so the caller sees a failure while the
	// side effect exists. If the call fails on its own, that failure is passed on.
	Crash
	// LostResponse lets the call take effect, discards its successful response and
	// answers HTTP 503 instead, which the SDK retries: it models a response lost on the
	// way back. The retry reaches the server again, so a conditional write meets its
	// own first attempt. If the call fails on its own, that failure is passed on.
	LostResponse
)

// String returns the kind's name.
func (k FaultKind) String() string {
	switch k {
	case Throttle:
		return "Throttle"
	case ServerError:
		return "ServerError"
	case Latency:
		return "Latency"
	case Crash:
		return "Crash"
	case LostResponse:
		return "LostResponse"
	}
	return "FaultKind(" + strconv.Itoa(int(k)) + ")"
}

// Fault describes calls to disturb and how.
type Fault struct {
	// Action is the AWS action name to match, e.g. "CreateVolume", "PutItem",
	// "UpdateItem"; "*" matches every action.
	Action string
	// Kind is what happens to a matching call.
	Kind FaultKind
	// Times is how many matching calls get the fault; 0 means every one.
	Times int
	// Skip lets this many matching calls through (to later faults, then the server)
	// before the fault starts applying.
	Skip int
	// Code overrides the error code. The defaults: Throttle -> RequestLimitExceeded
	// (ec2), ThrottlingException (JSON-protocol services) or Throttling (query
	// services, Route 53, CloudWatch); ServerError -> Unavailable (ec2) or
	// ServiceUnavailable; Crash -> InjectedCrash; LostResponse as ServerError.
	Code string
	// Latency is the delay a Latency fault adds.
	Latency time.Duration
	// Every, when above 1, applies the fault to one matching call in Every (the
	// first, then every Every-th) and lets the others through. With Every 2 and a
	// Throttle, every logical call is throttled once and then succeeds on the SDK's
	// retry: "throttling on every call".
	Every int
}

// faultState is an injected fault and how far it has got.
type faultState struct {
	Fault
	seen    int // matching calls that reached this fault
	applied int // calls it was applied to
}

// Inject adds a fault. Faults are evaluated in injection order and the first one
// that applies wins; a fault that is still skipping, or has been applied Times times,
// passes the call on to the next one. Inject panics on an invalid fault (a
// programming error in the test).
func (e *Emulator) Inject(f Fault) {
	switch {
	case f.Action == "":
		panic("emulator: Fault.Action is empty (use \"*\" for every action)")
	case f.Kind < Throttle || f.Kind > LostResponse:
		panic(fmt.Sprintf("emulator: invalid Fault.Kind %v", f.Kind))
	case f.Times < 0 || f.Skip < 0 || f.Latency < 0 || f.Every < 0:
		panic(fmt.Sprintf("emulator: negative Times, Skip or Latency in %+v", f))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = append(e.faults, &faultState{Fault: f})
}

// FaultCounts returns how many calls each kind of fault was applied to since the
// emulator started (ClearFaults and ResetCounts do not reset it).
func (e *Emulator) FaultCounts() map[FaultKind]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[FaultKind]int, len(e.faultCounts))
	for k, n := range e.faultCounts {
		out[k] = n
	}
	return out
}

// ClearFaults removes all faults.
func (e *Emulator) ClearFaults() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = nil
}

// matchFault returns the fault to apply to a call of action. e.mu must be held.
func (e *Emulator) matchFault(action string) (Fault, bool) {
	for _, fs := range e.faults {
		if fs.Action != "*" && fs.Action != action {
			continue
		}
		if fs.Times > 0 && fs.applied >= fs.Times {
			continue // used up
		}
		fs.seen++
		if fs.seen <= fs.Skip {
			continue
		}
		if fs.Every > 1 && (fs.seen-fs.Skip-1)%fs.Every != 0 {
			continue
		}
		fs.applied++
		if e.faultCounts == nil {
			e.faultCounts = map[FaultKind]int{}
		}
		e.faultCounts[fs.Kind]++
		return fs.Fault, true
	}
	return Fault{}, false
}

// writeFault answers c with the error of fault f. message overrides the default.
func (e *Emulator) writeFault(w http.ResponseWriter, c call, f Fault, message string) {
	status, code, fallbackMessage := http.StatusBadRequest, f.Code, ""
	isEC2 := c.protocol == protocolQuery && c.service == "ec2"
	switch f.Kind {
	case Throttle:
		switch {
		case isEC2:
			// EC2 really answers RequestLimitExceeded with HTTP 503.
			status, code, fallbackMessage = http.StatusServiceUnavailable, orDefault(code, "RequestLimitExceeded"), "Request limit exceeded."
		case c.protocol == protocolJSON:
			code, fallbackMessage = orDefault(code, "ThrottlingException"), "Rate exceeded"
		default:
			code, fallbackMessage = orDefault(code, "Throttling"), "Rate exceeded"
		}
	case ServerError, LostResponse:
		status = http.StatusServiceUnavailable
		if isEC2 {
			code = orDefault(code, "Unavailable")
		} else {
			code = orDefault(code, "ServiceUnavailable")
		}
		fallbackMessage = "Service is unavailable (injected by the emulator)"
	case Crash:
		code = orDefault(code, "InjectedCrash")
	}
	e.writeAPIError(w, c, status, code, orDefault(message, fallbackMessage))
}

func orDefault(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

// xmlError is the <Error> element shared by the query and REST-XML error formats.
type xmlError struct {
	Type    string `xml:"Type,omitempty"`
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

// ec2ErrorResponse is EC2's error body.
type ec2ErrorResponse struct {
	XMLName   xml.Name   `xml:"Response"`
	Errors    []xmlError `xml:"Errors>Error"`
	RequestID string     `xml:"RequestID"`
}

// queryErrorResponse is the error body of awsquery services and Route 53.
type queryErrorResponse struct {
	XMLName   xml.Name `xml:"ErrorResponse"`
	Error     xmlError `xml:"Error"`
	RequestID string   `xml:"RequestId"`
}

// writeAPIError writes an AWS error in the wire format of c's protocol, so that the
// SDK parses code and message into a smithy.APIError.
func (e *Emulator) writeAPIError(w http.ResponseWriter, c call, status int, code, message string) {
	requestID := e.newRequestID()
	fault := "Sender"
	if status >= 500 {
		fault = "Receiver"
	}
	hdr := w.Header()
	hdr.Set("X-Amzn-RequestId", requestID)
	var body []byte
	switch {
	case c.protocol == protocolJSON:
		contentType := c.contentType // mirrors 1.0 (DynamoDB) or 1.1 (SSM)
		if !strings.HasPrefix(contentType, "application/x-amz-json-") {
			contentType = "application/x-amz-json-1.0"
		}
		hdr.Set("Content-Type", contentType)
		hdr.Set("X-Amzn-ErrorType", code)
		body, _ = json.Marshal(map[string]string{"__type": code, "message": message})
	case c.protocol == protocolCBOR:
		hdr.Set("Content-Type", "application/cbor")
		hdr.Set("Smithy-Protocol", "rpc-v2-cbor")
		hdr.Set("X-Amzn-Query-Error", code+";"+fault) // read by query-compatible clients (CloudWatch)
		body = cbor.Encode(cbor.Map{"__type": cbor.String(code), "message": cbor.String(message)})
	case c.protocol == protocolQuery && c.service == "ec2":
		hdr.Set("Content-Type", "text/xml;charset=UTF-8")
		body = marshalXML(ec2ErrorResponse{Errors: []xmlError{{Code: code, Message: message}}, RequestID: requestID})
	default:
		hdr.Set("Content-Type", "text/xml")
		body = marshalXML(queryErrorResponse{Error: xmlError{Type: fault, Code: code, Message: message}, RequestID: requestID})
	}
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func marshalXML(v any) []byte {
	b, err := xml.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("emulator: marshalling %T: %v", v, err)) // fixed, marshalable types
	}
	return append([]byte(xml.Header), b...)
}

func (e *Emulator) newRequestID() string {
	return fmt.Sprintf("emulator-%012d", e.requestID.Add(1))
}
