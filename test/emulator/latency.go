package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The latency model: moto answers every call in about a millisecond and changes every
// state at once, so against it the functions' critical paths take no time at all.
// SetLatency makes the proxy take about as long as AWS: each call waits a delay drawn
// for its service and action, and the state changes that take seconds in AWS take
// seconds here too. It is the one place those figures live; the benchmarks use it.
//
// The figures, and where they come from:
//
//   - EC2 describes, ~100 ms (80–150 ms); other EC2 API calls 100–300 ms. EC2's API
//     answers a describe in tens to a few hundred milliseconds; the model takes the
//     common middle. A mutating call answers as soon as the change has begun (the
//     AttachVolume reference: the answer's state is "attaching"), which is why it is
//     only a little slower.
//   - A volume or network-interface attach stays "attaching", and a detach
//     "detaching", for 1–4 s before the state changes (EC2 API reference,
//     AttachVolume/DetachVolume and the EBS volume states: attaching → attached,
//     detaching → available; the 1–4 s range is what attaches and detaches take on
//     Nitro instances in practice, and the range the project's issue tracker set for
//     this model). A detach is answered at once ("detaching") and reaches moto only
//     when its window ends, so until then moto, and every describe, keeps the volume
//     in use and the ENI attached. The model therefore hides a detach's own error (a
//     detach of a volume that is not attached is answered "detaching" all the same):
//     it is for benchmarks, not for tests of failures.
//   - DynamoDB, ~10 ms (5–15 ms): "most atomic operations, such as GetItem and
//     PutItem, can expect an average latency in single-digit milliseconds" (AWS
//     re:Post knowledge center, "dynamodb-high-latency"), plus the round trip from
//     Lambda in the same region.
//   - Auto Scaling, ~100 ms (50–150 ms), CloudWatch ~50 ms (20–80 ms), SSM API calls
//     ~100 ms (50–150 ms): regional query/JSON APIs like EC2's describes.
//   - Route 53: a ChangeResourceRecordSets call 100–300 ms. A change is PENDING until
//     it reaches every Route 53 name server, then INSYNC (GetChange reference; Route 53
//     says changes propagate within 60 s, typically about a second). slotkeeper never
//     waits for INSYNC (it calls no GetChange), so only the call's own latency is on
//     its path, and the model needs no PENDING window.
//   - An SSM command (the stop-and-unmount of a leaving broker): GetCommandInvocation
//     reports it InProgress for 2–5 s after SendCommand: the agent's delivery (Run
//     Command reaches an online agent through its open channel within about a second)
//     and a controlled shutdown of a small broker (Kafka moves its leaderships away
//     first: a few seconds for a few hundred partitions). This one is an assumption
//     about Kafka, not an AWS figure; real brokers with many partitions take longer.
//   - Anything else: 50–150 ms.
//
// Not modelled: instance boot (pending → running and the user data up to the launch
// hook; the launch event arrives when the instance is already pending, and the
// benchmarks measure from that event), throttling, and retries' backoff.
//
// Every delay and window is drawn from a rand seeded by LatencyModel.Seed, so a run
// with the same seed and the same call order draws the same figures (concurrent
// callers can interleave their draws differently). Scale multiplies every delay and
// window: 1 is real time, 0.1 ten times faster, 0 no delay at all.

// LatencyModel configures SetLatency.
type LatencyModel struct {
	// Seed seeds the draws.
	Seed uint64
	// Scale multiplies every delay and window (1: as AWS; 0: none).
	Scale float64
}

// span is a range of durations, drawn uniformly.
type span struct{ lo, hi time.Duration }

// The model's figures (see above).
var (
	spanEC2Describe  = span{80 * time.Millisecond, 150 * time.Millisecond}
	spanEC2Other     = span{100 * time.Millisecond, 300 * time.Millisecond}
	spanAttachWindow = span{time.Second, 4 * time.Second}
	spanDynamoDB     = span{5 * time.Millisecond, 15 * time.Millisecond}
	spanAutoScaling  = span{50 * time.Millisecond, 150 * time.Millisecond}
	spanCloudWatch   = span{20 * time.Millisecond, 80 * time.Millisecond}
	spanSSM          = span{50 * time.Millisecond, 150 * time.Millisecond}
	spanRoute53      = span{100 * time.Millisecond, 300 * time.Millisecond}
	spanSSMCommand   = span{2 * time.Second, 5 * time.Second}
	spanOther        = span{50 * time.Millisecond, 150 * time.Millisecond}
)

// CallLatency returns the range a call's own delay is drawn from, at scale 1.
func CallLatency(service, action string) (lo, hi time.Duration) {
	s := callSpan(service, action)
	return s.lo, s.hi
}

// StateWindow returns the range the window of a state change is drawn from, at
// scale 1: attaching/detaching ("attach"), an SSM command InProgress ("ssm-command").
func StateWindow(kind string) (lo, hi time.Duration) {
	switch kind {
	case "attach":
		return spanAttachWindow.lo, spanAttachWindow.hi
	case "ssm-command":
		return spanSSMCommand.lo, spanSSMCommand.hi
	}
	panic("emulator: unknown state window " + kind)
}

func callSpan(service, action string) span {
	switch service {
	case "ec2":
		if strings.HasPrefix(action, "Describe") {
			return spanEC2Describe
		}
		return spanEC2Other
	case "dynamodb":
		return spanDynamoDB
	case "autoscaling":
		return spanAutoScaling
	case "monitoring":
		return spanCloudWatch
	case "ssm":
		return spanSSM
	case "route53":
		return spanRoute53
	}
	return spanOther
}

// latency is the model's state: the draws and the windows in progress.
type latency struct {
	mu    sync.Mutex
	model *LatencyModel
	rng   *rand.Rand
	// until when a volume (by id) or an ENI attachment (by attachment id) reports
	// attaching or detaching, and an SSM command (by id) InProgress
	attaching, detaching, running map[string]time.Time
	spans                         []CallSpan
}

// SetLatency turns the latency model on (see above), or off with nil. Windows in
// progress are forgotten.
func (e *Emulator) SetLatency(m *LatencyModel) {
	e.lat.mu.Lock()
	defer e.lat.mu.Unlock()
	e.lat.model = nil
	if m != nil {
		mm := *m
		e.lat.model = &mm
		e.lat.rng = rand.New(rand.NewPCG(m.Seed, 0x5107_6ee9))
	}
	e.lat.attaching, e.lat.detaching, e.lat.running = map[string]time.Time{}, map[string]time.Time{}, map[string]time.Time{}
	e.lat.spans = nil
}

// draw returns a duration of s, scaled; ok is false when the model is off.
func (l *latency) draw(s span) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.model == nil {
		return 0, false
	}
	d := s.lo
	if s.hi > s.lo {
		d += time.Duration(l.rng.Int64N(int64(s.hi - s.lo)))
	}
	return time.Duration(float64(d) * l.model.Scale), true
}

func (l *latency) open(m map[string]time.Time, id string, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.model != nil {
		m[id] = time.Now().Add(d)
	}
}

// inWindow returns the ids of m whose window is still open.
func (l *latency) inWindow(m map[string]time.Time) map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now, out := time.Now(), map[string]bool{}
	for id, until := range m {
		if now.Before(until) {
			out[id] = true
		} else {
			delete(m, id)
		}
	}
	return out
}

// withLatency wraps next with the model's delay and windows for call c; body is the
// request's body. It returns next unchanged when the model is off.
func (e *Emulator) withLatency(c call, body []byte, next http.HandlerFunc) http.HandlerFunc {
	delay, on := e.lat.draw(callSpan(c.service, c.action))
	if !on {
		return next
	}
	handler := next
	switch {
	case c.service == "ec2" && (c.action == "AttachVolume" || c.action == "AttachNetworkInterface"):
		handler = e.attach(c, next)
	case c.service == "ec2" && (c.action == "DetachVolume" || c.action == "DetachNetworkInterface"):
		handler = e.detach(c, body, next)
	case c.service == "ec2" && c.action == "DescribeVolumes":
		handler = e.rewriteWith(next, e.volumeWindows)
	case c.service == "ec2" && c.action == "DescribeNetworkInterfaces":
		handler = e.rewriteWith(next, e.eniWindows)
	case c.service == "ssm" && c.action == "SendCommand":
		handler = e.rewriteWith(next, e.commandStarted)
	case c.service == "ssm" && c.action == "GetCommandInvocation":
		handler = e.rewriteWith(next, e.commandProgress)
	}
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		handler(w, r)
		e.trace(c, r, start)
	}
}

var attachmentIDRE = regexp.MustCompile(`<attachmentId>([^<]+)</attachmentId>`)

// attach lets the attach through, then opens its attaching window.
func (e *Emulator) attach(c call, next http.HandlerFunc) http.HandlerFunc {
	return e.rewriteWith(next, func(resp []byte) []byte {
		window, _ := e.lat.draw(spanAttachWindow)
		if c.action == "AttachVolume" {
			e.lat.open(e.lat.attaching, c.form.Get("VolumeId"), window)
		} else if m := attachmentIDRE.FindSubmatch(resp); m != nil {
			e.lat.open(e.lat.attaching, string(m[1]), window)
		}
		return resp
	})
}

// detach answers the detach as begun, and forwards it to moto when its window ends.
func (e *Emulator) detach(c call, body []byte, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		window, _ := e.lat.draw(spanAttachWindow)
		if window <= 0 { // scale 0: as moto, at once
			next(w, r)
			return
		}
		id := c.form.Get("VolumeId")
		if c.action == "DetachNetworkInterface" {
			id = c.form.Get("AttachmentId")
		}
		e.lat.open(e.lat.detaching, id, window)
		later := r.Clone(context.WithoutCancel(r.Context()))
		later.Body = io.NopCloser(bytes.NewReader(body))
		time.AfterFunc(window, func() { next(httptest.NewRecorder(), later) })
		if c.action == "DetachVolume" {
			e.writeHeldDetach(w, c)
			return
		}
		answer := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+
			`<DetachNetworkInterfaceResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>%s</requestId>`+
			`<return>true</return></DetachNetworkInterfaceResponse>`, e.newRequestID())
		w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
		w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(answer))
	}
}

var (
	attachmentSetRE = regexp.MustCompile(`(?s)<attachmentSet>.*?</attachmentSet>`)
	eniAttachmentRE = regexp.MustCompile(`(?s)<attachment>.*?</attachment>`)
	volumeIDRE      = regexp.MustCompile(`<volumeId>([^<]+)</volumeId>`)
)

// volumeWindows reports the attachments of volumes in a window as attaching or
// detaching instead of attached.
func (e *Emulator) volumeWindows(body []byte) []byte {
	return e.attachmentWindows(body, attachmentSetRE, volumeIDRE)
}

// eniWindows does the same for network-interface attachments.
func (e *Emulator) eniWindows(body []byte) []byte {
	return e.attachmentWindows(body, eniAttachmentRE, attachmentIDRE)
}

func (e *Emulator) attachmentWindows(body []byte, block, key *regexp.Regexp) []byte {
	attaching, detaching := e.lat.inWindow(e.lat.attaching), e.lat.inWindow(e.lat.detaching)
	if len(attaching) == 0 && len(detaching) == 0 {
		return body
	}
	return block.ReplaceAllFunc(body, func(b []byte) []byte {
		m := key.FindSubmatch(b)
		if m == nil {
			return b
		}
		state := ""
		switch {
		case detaching[string(m[1])]:
			state = "detaching"
		case attaching[string(m[1])]:
			state = "attaching"
		default:
			return b
		}
		return bytes.ReplaceAll(b, []byte("<status>attached</status>"), []byte("<status>"+state+"</status>"))
	})
}

// commandStarted opens the InProgress window of a command SendCommand started.
func (e *Emulator) commandStarted(resp []byte) []byte {
	var out struct{ Command struct{ CommandId string } }
	if json.Unmarshal(resp, &out) == nil && out.Command.CommandId != "" {
		window, _ := e.lat.draw(spanSSMCommand)
		e.lat.open(e.lat.running, out.Command.CommandId, window)
	}
	return resp
}

// commandProgress reports a command in its window InProgress, without output.
func (e *Emulator) commandProgress(resp []byte) []byte {
	var inv map[string]any
	if json.Unmarshal(resp, &inv) != nil {
		return resp
	}
	id, _ := inv["CommandId"].(string)
	if !e.lat.inWindow(e.lat.running)[id] {
		return resp
	}
	inv["Status"], inv["StatusDetails"], inv["ResponseCode"] = "InProgress", "InProgress", -1
	inv["StandardOutputContent"], inv["StandardErrorContent"] = "", ""
	delete(inv, "ExecutionEndDateTime")
	out, err := json.Marshal(inv)
	if err != nil {
		return resp
	}
	return out
}

// CallSpan is one call the proxy answered while the latency model was on: when it
// arrived and when its answer was written.
type CallSpan struct {
	Service, Action string
	// Caller is the application id of the client's User-Agent ("app/<id>", set with
	// aws.Config.AppID), "" without one.
	Caller     string
	Start, End time.Time
}

var appIDRE = regexp.MustCompile(`(?:^| )app/([^ ]+)`)

// trace records the span of a call (model on only).
func (e *Emulator) trace(c call, r *http.Request, start time.Time) {
	e.lat.mu.Lock()
	defer e.lat.mu.Unlock()
	if e.lat.model == nil {
		return
	}
	sp := CallSpan{Service: c.service, Action: c.action, Start: start, End: time.Now()}
	if m := appIDRE.FindStringSubmatch(r.Header.Get("User-Agent")); m != nil {
		sp.Caller = m[1]
	}
	e.lat.spans = append(e.lat.spans, sp)
}

// Spans returns the calls answered while the latency model was on, in the order
// their answers were written, and forgets them.
func (e *Emulator) Spans() []CallSpan {
	e.lat.mu.Lock()
	defer e.lat.mu.Unlock()
	out := e.lat.spans
	e.lat.spans = nil
	return out
}

// RoundTrips returns the length of the longest chain of spans one after another
// (each starting after the previous one's answer): the sequential round trips
// among them. Concurrent calls (a heartbeat beside the main work) count once.
func RoundTrips(spans []CallSpan) int {
	s := append([]CallSpan(nil), spans...)
	slices.SortFunc(s, func(a, b CallSpan) int { return a.End.Compare(b.End) })
	n, last := 0, time.Time{}
	for _, sp := range s {
		if !sp.Start.Before(last) {
			n++
			last = sp.End
		}
	}
	return n
}
