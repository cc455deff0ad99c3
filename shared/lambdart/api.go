package lambdart

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Runtime API paths and headers (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html).
const (
	apiPrefix      = "/2018-06-01/runtime/"
	pathNext       = apiPrefix + "invocation/next"
	pathInvocation = apiPrefix + "invocation/" // + {id}/response | {id}/error
	pathInitError  = apiPrefix + "init/error"

	HeaderRequestID   = "Lambda-Runtime-Aws-Request-Id"
	HeaderDeadlineMS  = "Lambda-Runtime-Deadline-Ms"
	HeaderFunctionARN = "Lambda-Runtime-Invoked-Function-Arn"
	HeaderTraceID     = "Lambda-Runtime-Trace-Id"
	HeaderErrorType   = "Lambda-Runtime-Function-Error-Type"
)

// apiError is the body of a Runtime API error answer.
type apiError struct {
	Message string `json:"errorMessage"`
	Type    string `json:"errorType"`
}

// routes is the Runtime API of one environment.
func (e *environment) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+pathNext, e.serveNext)
	mux.HandleFunc("POST "+pathInvocation+"{id}/response", func(w http.ResponseWriter, r *http.Request) {
		e.serveResult(w, r, false)
	})
	mux.HandleFunc("POST "+pathInvocation+"{id}/error", func(w http.ResponseWriter, r *http.Request) {
		e.serveResult(w, r, true)
	})
	mux.HandleFunc("POST "+pathInitError, e.serveInitError)
	return mux
}

// serveNext hands the runtime its next invocation, waiting until there is one. The
// first call marks the end of the environment's initialisation.
func (e *environment) serveNext(w http.ResponseWriter, r *http.Request) {
	e.readyOnce.Do(func() {
		e.mu.Lock()
		e.readyAt = time.Now()
		e.mu.Unlock()
	})
	var inv *invocation
	select {
	case inv = <-e.next:
	case <-r.Context().Done():
		return
	case <-e.stopping:
		writeAPIError(w, http.StatusInternalServerError, "Runtime.Shutdown", "the environment is shutting down")
		return
	}
	now := time.Now()
	inv.handedAt = now
	inv.deadline = now.Add(e.f.timeout())
	e.mu.Lock()
	e.current = inv
	e.mu.Unlock()

	h := w.Header()
	h.Set(HeaderRequestID, inv.id)
	h.Set(HeaderDeadlineMS, strconv.FormatInt(inv.deadline.UnixMilli(), 10))
	h.Set(HeaderFunctionARN, e.f.ARN())
	h.Set(HeaderTraceID, inv.traceID)
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(inv.payload)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(inv.payload)
	close(inv.handed)
}

// serveResult ends the current invocation with the runtime's response or error.
func (e *environment) serveResult(w http.ResponseWriter, r *http.Request, failed bool) {
	id := r.PathValue("id")
	e.mu.Lock()
	inv := e.current
	if inv == nil || inv.id != id {
		e.mu.Unlock()
		writeAPIError(w, http.StatusBadRequest, "InvalidRequestID", "Invalid request ID: "+strconv.Quote(id)+" is not the invocation in progress")
		return
	}
	e.current = nil
	e.mu.Unlock()

	body, err := io.ReadAll(io.LimitReader(r.Body, MaxResponseBytes+1))
	switch {
	case err != nil:
		inv.err = &FunctionError{Type: ErrorTypeExit, Message: "reading the runtime's answer: " + err.Error()}
		writeAPIError(w, http.StatusBadRequest, "InvalidRequest", err.Error())
	case len(body) > MaxResponseBytes:
		inv.err = &FunctionError{Type: ErrorTypeTooLarge, Message: "Response payload size exceeded maximum allowed payload size (6291556 bytes)."}
		writeAPIError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", inv.err.Message)
	case failed:
		inv.err = parseFunctionError(body, r.Header.Get(HeaderErrorType))
		writeAccepted(w)
	default:
		inv.result = body
		writeAccepted(w)
	}
	close(inv.answered)
}

// serveInitError records the runtime's report of a failed initialisation; the
// environment is discarded.
func (e *environment) serveInitError(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, MaxResponseBytes))
	fe := parseFunctionError(body, r.Header.Get(HeaderErrorType))
	e.failOnce.Do(func() {
		e.mu.Lock()
		e.initErr = fe
		e.mu.Unlock()
		close(e.initFail)
	})
	writeAccepted(w)
}

// parseFunctionError reads an error body ({"errorMessage", "errorType", ...}); a body
// that is not such JSON becomes the message, typed by the header or "Unhandled".
func parseFunctionError(body []byte, headerType string) *FunctionError {
	var fe FunctionError
	if err := json.Unmarshal(body, &fe); err != nil || (fe.Type == "" && fe.Message == "") {
		fe = FunctionError{Message: strings.TrimSpace(string(body))}
	}
	if fe.Type == "" {
		fe.Type = headerType
	}
	if fe.Type == "" {
		fe.Type = "Unhandled"
	}
	return &fe
}

func writeAccepted(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write([]byte(`{"status":"OK"}`))
}

func writeAPIError(w http.ResponseWriter, code int, typ, msg string) {
	body, _ := json.Marshal(apiError{Message: msg, Type: typ})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
