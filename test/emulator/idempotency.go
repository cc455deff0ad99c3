package emulator

import (
	"net/http"
	"net/http/httptest"
	"sync"
)

// EC2 makes its create calls idempotent with a ClientToken: a request that repeats a
// token returns the result of the first request with that token instead of creating
// a second resource (docs.aws.amazon.com, "Ensuring idempotency in Amazon EC2 API
// requests"). moto ignores ClientToken, so the proxy provides it: the first successful
// answer to an EC2 call carrying a given (action, ClientToken) is remembered and
// replayed for every later call with the same pair, concurrent ones included.
//
// Where this differs from EC2: the parameters of a repeated request are not compared
// with the first one's (EC2 answers IdempotentParameterMismatch when they differ), and
// tokens never expire.

type idempotentEntry struct {
	mu   sync.Mutex
	done bool
	rec  *httptest.ResponseRecorder
}

// idempotent answers a call that carries a ClientToken, forwarding it to next only if
// no earlier call with the same action and token succeeded.
func (e *Emulator) idempotent(w http.ResponseWriter, r *http.Request, key string, next http.HandlerFunc) {
	e.mu.Lock()
	if e.tokens == nil {
		e.tokens = map[string]*idempotentEntry{}
	}
	ent, ok := e.tokens[key]
	if !ok {
		ent = &idempotentEntry{}
		e.tokens[key] = ent
	}
	e.mu.Unlock()

	ent.mu.Lock()
	defer ent.mu.Unlock()
	if !ent.done {
		rec := httptest.NewRecorder()
		next(rec, r)
		if rec.Code/100 != 2 {
			copyResponse(w, rec) // a failed call creates nothing: the token stays unused
			return
		}
		ent.done, ent.rec = true, rec
	}
	copyResponse(w, ent.rec)
}
