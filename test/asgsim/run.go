package asgsim

import (
	"bytes"
	"container/heap"
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/kafka"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/test/emulator"
)

// Violation is an invariant found broken.
type Violation struct {
	// Invariant names the invariant (see Invariants).
	Invariant string
	// Step is the step after which (or during which) it was found, At its simulated
	// time, and Op the number of plan operations applied by then.
	Step int
	At   time.Duration
	Ops  int
	// What says what was seen.
	What string
}

func (v Violation) String() string {
	return fmt.Sprintf("[%s] step %d (%.1fs, after %d ops): %s", v.Invariant, v.Step, v.At.Seconds(), v.Ops, v.What)
}

// Result is what one run did.
type Result struct {
	Case       Case
	Slots      int
	Steps      int
	Events     int
	Deliveries int
	Checks     int
	// Faults counts the faults that took effect, by kind (AWS faults by the
	// emulator's kind names, delivery faults by mode, stop faults by mode, and the
	// world's own: broker deaths, Kafka gone, lost heartbeats).
	Faults map[string]int
	// Ops counts the operations applied, by kind.
	Ops        map[string]int
	Violations []Violation
	// Sim is the simulated time the run covered; Wall the real time it took.
	Sim, Wall time.Duration
	// Forced counts the alerts raised knowingly (unsafe terminations forced, forced
	// detaches past the bound, volumes left attached).
	Alerts map[string]int
	// Known counts the documented outcomes that leave a slot needing an operator
	// (they are reported, not violations).
	Known map[string]int
	// Err is a failure of the simulator itself (not an invariant).
	Err error
	// Log is the tail of the handlers' log when a violation was found.
	Log string
}

// event is one scheduled step of a run.
type event struct {
	at    time.Duration
	seq   int
	label string
	fn    func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// run is one seed's simulation.
type run struct {
	env  *Env
	e    *emulator.Emulator
	plan Plan
	tm   Timing
	clk  *clock
	ctx  context.Context
	st   *demo.Stage
	cfg  config.Config
	h    *handlers
	d    *direct
	kcl  *kafka.Client
	logs *syncBuffer
	// quiet is set once the plan's operations are over: no more faults.
	quiet bool

	errMu    sync.Mutex // guards res.Err
	mu       sync.Mutex
	q        eventQueue
	seq      int
	res      *Result
	step     int
	opsDone  int
	insts    map[string]*instance
	order    []*instance
	actions  map[actionKey]*action
	desired  int
	relaunch time.Duration // no launch before this (after abandons)
	abandons int
	refresh  *refreshState
	inflight int
	busy     int // other work in flight that must not be warped over (SSM commands, slotctl)
	nodes    []*node
	vols     map[string]*volState
	cmds     map[string]*command
	armedDel []Op
	armedSSM []Op
	alerts   []alertRec
	seen     seenState
	doneAt   map[actionKey]time.Duration
	termSeen int
	compSeen int
	lastAZ   string
	viol     map[string]bool
	parts    []part
	last     *snapshot
	removals map[string]removal
	// lastFailure is when a broker last failed (crash, death) in simulated time.
	lastFailure time.Duration
}

// seenState is what the invariants remember across steps.
type seenState struct {
	holders   map[int]map[string]bool   // slot -> every instance that ever held it
	version   map[int]int64             // slot -> highest version seen
	atVersion map[[2]int64]string       // (slot, version) -> holder seen at it
	recorded  map[int]map[string]string // slot -> kind -> id recorded
	size      map[string]int32          // volume -> largest size seen
	everVols  map[string]bool           // volumes and ENIs ever recorded
}

func (r *run) now() time.Duration { return r.clk.now() }

// schedule adds fn as a step at simulated time at. r.mu must be held.
func (r *run) schedule(at time.Duration, label string, fn func()) {
	r.seq++
	heap.Push(&r.q, &event{at: at, seq: r.seq, label: label, fn: fn})
}

// after schedules fn d from now. r.mu must be held.
func (r *run) after(d time.Duration, label string, fn func()) { r.schedule(r.now()+d, label, fn) }

// fault counts a fault that took effect. r.mu must be held.
func (r *run) fault(kind string) { r.res.Faults[kind]++ }

// violate records a broken invariant, once per invariant and subject. r.mu must be
// held.
func (r *run) violate(invariant, format string, args ...any) {
	what := fmt.Sprintf(format, args...)
	key := invariant + "|" + what
	if r.viol[key] {
		return
	}
	r.viol[key] = true
	r.res.Violations = append(r.res.Violations, Violation{Invariant: invariant, Step: r.step, At: r.now(), Ops: r.opsDone, What: what})
}

// rng returns the random stream of an entity of this run.
func (r *run) rng(kind string, n int) *rand.Rand {
	var h uint64 = 1469598103934665603
	for _, c := range kind {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return rngFor(r.plan.Seed, h^uint64(n)<<20)
}

// loop runs steps until done reports true (checked whenever nothing is due), the
// simulated time passes until, or the context ends. After every step the invariants
// are checked. When nothing runs in real time (no invocation, no command, nothing due
// now), simulated time jumps to the next step.
func (r *run) loop(until time.Duration, done func() bool) {
	for r.ctx.Err() == nil {
		r.clk.hold()
		r.poll()
		r.clk.release()
		r.mu.Lock()
		now := r.now()
		if now > until {
			r.mu.Unlock()
			return
		}
		if r.q.Len() == 0 || r.q[0].at > now {
			idle := r.inflight == 0 && r.busy == 0
			var next time.Duration = -1
			if r.q.Len() > 0 {
				next = r.q[0].at
			}
			r.mu.Unlock()
			if done() {
				return
			}
			if idle && next > now {
				r.clk.warp(min(next, until+time.Second) - now)
				continue
			}
			wait := 20 * time.Millisecond
			if next >= 0 {
				wait = min(wait, time.Until(r.clk.realAt(next)))
			}
			if wait > 0 {
				time.Sleep(wait)
			}
			continue
		}
		ev := heap.Pop(&r.q).(*event)
		r.step++
		r.mu.Unlock()
		r.clk.hold()
		ev.fn()
		r.check()
		r.clk.release()
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers that keeps only the last
// limit bytes.
type syncBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	limit int
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limit > 0 && s.b.Len() > 2*s.limit {
		tail := append([]byte(nil), s.b.Bytes()[s.b.Len()-s.limit:]...)
		s.b.Reset()
		s.b.Write(tail)
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
