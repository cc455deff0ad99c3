package emulator

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
)

// Override rewrites moto's answers to one action, for states moto never reaches by
// itself: moto completes a volume modification at once, where EC2 keeps it
// "modifying" for minutes, and every SSM command succeeds. The call still reaches moto
// and takes effect there, exactly as without the override; only the response body the
// code under test receives is rewritten (status and headers are kept). Rewrite also
// sees the request, so an override that returns the response unchanged records what
// the code under test asked for.
type Override struct {
	// Action is the AWS action name to match, e.g. "DescribeVolumesModifications".
	Action string
	// Rewrite returns the body to answer with, given the request's body and moto's
	// response body. It is called from the proxy's goroutines.
	Rewrite func(request, response []byte) []byte
	// Times is how many matching calls are rewritten; 0 means every one.
	Times int
}

// overrideState is an installed override and how often it was applied.
type overrideState struct {
	Override
	applied int
}

// overrideSet is the overrides of one emulator, and the hook that applies them: it
// wraps the proxy's forwarder to moto (next), so the proxy itself needs no change.
type overrideSet struct {
	next      http.Handler
	mu        sync.Mutex
	overrides []*overrideState
}

// Override installs o and returns a function that removes it. Overrides are tried in
// the order they were installed; the first one that matches and is not used up
// rewrites the answer.
//
// The first Override of an emulator installs the hook in the proxy, and must come before
// the proxy has received any call (the proxy reads its forwarder without locking):
// install overrides right after Start and the world set-up, then arm them through
// Rewrite's own state if they should only apply later. Override panics when that
// order is not kept, or when o is invalid (a programming error in the test).
func (e *Emulator) Override(o Override) (remove func()) {
	if o.Action == "" || o.Rewrite == nil || o.Times < 0 {
		panic("emulator: Override needs an Action, a Rewrite and Times >= 0")
	}
	e.mu.Lock()
	set, installed := e.forward.(*overrideSet)
	if !installed {
		if len(e.counts) > 0 || len(e.mutating) > 0 {
			e.mu.Unlock()
			panic("emulator: the first Override must come before the proxy receives its first call")
		}
		set = &overrideSet{next: e.forward}
		e.forward = set
	}
	e.mu.Unlock()

	st := &overrideState{Override: o}
	set.mu.Lock()
	set.overrides = append(set.overrides, st)
	set.mu.Unlock()
	return func() {
		set.mu.Lock()
		defer set.mu.Unlock()
		for i, s := range set.overrides {
			if s == st {
				set.overrides = append(set.overrides[:i], set.overrides[i+1:]...)
				return
			}
		}
	}
}

// match returns the override to apply to a call of action, counting it as applied.
func (s *overrideSet) match(action string) *overrideState {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.overrides {
		if o.Action == action && (o.Times == 0 || o.applied < o.Times) {
			o.applied++
			return o
		}
	}
	return nil
}

// ServeHTTP forwards the call to moto and applies the first matching override to
// the answer.
func (s *overrideSet) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "emulator override: reading request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	o := s.match(identify(r, body).action)
	if o == nil {
		s.next.ServeHTTP(w, r)
		return
	}
	r.Header.Del("Accept-Encoding") // a plain body to rewrite
	rec := httptest.NewRecorder()
	s.next.ServeHTTP(rec, r)
	out := o.Rewrite(body, rec.Body.Bytes())
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(rec.Code)
	_, _ = w.Write(out)
}
