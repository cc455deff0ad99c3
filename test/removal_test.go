package test

// Auto Scaling runs paths together: several terminations at once, a replacement
// launched while the old holder is still leaving, duplicate and late deliveries, an
// instance shutting down. These tests deliver such sequences to the real handlers
// against moto (with the windows moto skips modelled by the harness) and kfake.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/lambdacontext"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"

	"github.com/slotkeeper/slotkeeper/shared/alert"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/hostcmd"
	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest"
	"github.com/slotkeeper/slotkeeper/shared/launch"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// logRecord is one JSON log line of the handlers.
type logRecord struct {
	At       time.Time `json:"timestamp"`
	Message  string    `json:"message"`
	Function string    `json:"function"`
	Instance string    `json:"instance"`
	Reason   string    `json:"reason"`
	Step     string    `json:"step"`
	Line     string    `json:"-"`
}

// records returns the handlers' log records so far, in order.
func (c *cluster) records() []logRecord {
	c.t.Helper()
	var out []logRecord
	for _, line := range strings.Split(strings.TrimSpace(c.logs.String()), "\n") {
		var r logRecord
		if json.Unmarshal([]byte(line), &r) == nil {
			r.Line = line
			out = append(out, r)
		}
	}
	return out
}

// first returns the index of the first record of instance whose message starts with
// msg, or -1.
func first(recs []logRecord, instance, msg string) int {
	return slices.IndexFunc(recs, func(r logRecord) bool {
		return (instance == "" || r.Instance == instance) && strings.HasPrefix(r.Message, msg)
	})
}

// detaches returns the DetachVolume and DetachNetworkInterface requests since the last
// ResetCounts as "Action force=true|false".
func detaches(h *harness.Harness) []string {
	var out []string
	for _, action := range []string{"DetachVolume", "DetachNetworkInterface"} {
		for _, body := range h.Bodies(action) {
			form, _ := url.ParseQuery(string(body))
			out = append(out, action+" force="+strings.ToLower(orFalse(form.Get("Force"))))
		}
	}
	return out
}

func orFalse(s string) string {
	if s == "" {
		return "false"
	}
	return s
}

func forcedDetaches(h *harness.Harness) int {
	n := 0
	for _, d := range detaches(h) {
		if strings.HasSuffix(d, "force=true") {
			n++
		}
	}
	return n
}

// inGroup models ids as instances of the cluster's group in state, with health.
func (c *cluster) inGroup(state, health string, ids ...string) {
	for _, id := range ids {
		az, _ := c.instance(id)
		c.h.SetGroupInstance(id, harness.GroupInstance{Group: c.cfg.ASGName, AZ: az, LifecycleState: state, HealthStatus: health})
	}
}

// stopsBrokers makes every stop-and-unmount command take its instance's broker out
// of kfake, as a controlled shutdown does: unregistered, out of every ISR. It must be
// installed before the proxy's first call; c is filled in later.
func stopsBrokers(h *harness.Harness, cp *atomic.Pointer[cluster], k *kafkaCluster) {
	var kp atomic.Pointer[kafkaCluster]
	kp.Store(k)
	stopsBrokersOf(h, cp, &kp)
}

// stopsBrokersOf is stopsBrokers for a cluster and a Kafka that change between runs.
func stopsBrokersOf(h *harness.Harness, cp *atomic.Pointer[cluster], kp *atomic.Pointer[kafkaCluster]) {
	h.Override(harness.Override{Action: "SendCommand", Rewrite: func(req, resp []byte) []byte {
		var in struct {
			InstanceIds []string
			Parameters  map[string][]string
		}
		c, k := cp.Load(), kp.Load()
		if json.Unmarshal(req, &in) != nil || !hostcmd.IsStopAndUnmount(in.Parameters["commands"]) || c == nil || k == nil {
			return resp
		}
		for _, id := range in.InstanceIds {
			leases, err := c.store.List(context.Background())
			if err != nil {
				continue
			}
			for _, l := range leases {
				if l.Holder == id {
					node := int32(c.cfg.NodeID(l.Slot))
					k.Unregister(node)
					for _, topic := range []string{"orders", "scratch"} {
						for p := range int32(3) {
							var isr []int32
							for _, r := range k.Replicas(topic, p) {
								if r != node {
									isr = append(isr, r)
								}
							}
							if len(isr) > 0 {
								k.SetISR(topic, p, isr...)
							}
						}
					}
				}
			}
		}
		return resp
	}})
}

// run delivers payload to a terminate handler as Lambda does and returns its result.
func runTerminate(t *testing.T, term *terminate.Handler, payload []byte, request string) (terminate.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: request})
	return term.Run(ctx, payload)
}

func runLaunch(t *testing.T, l *launch.Handler, payload []byte, request string) (launch.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: request})
	return l.Run(ctx, payload)
}

// Must show 1: a scale-in of two of three brokers at once (RF 3, min ISR 2). The
// second waits for the removal token; its safety is evaluated after the first broker
// left; it is unsafe, and it is forced only at its bound, with the ALERT.
func TestTwoRemovalsAtOnce(t *testing.T) {
	h := harness.Start(t)
	k := newKafka(t, 3)
	var cp atomic.Pointer[cluster]
	stopsBrokers(h, &cp, k)
	c := newCluster(t, h, 3, nil)
	cp.Store(c)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	h.ResetCounts()

	term := c.terminate(k.client(t))
	// Long enough for the first removal to finish well within it, even under -race.
	const bound = 6 * time.Second
	term.SafetyMaxWait = bound
	type outcome struct {
		res          terminate.Result
		err          error
		began, ended time.Time
	}
	out := make([]outcome, 2)
	var wg sync.WaitGroup
	for i, id := range ids[:2] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].began = time.Now()
			out[i].res, out[i].err = runTerminate(t, term, c.terminateEvent(id), fmt.Sprintf("scale-in-%d", i))
			out[i].ended = time.Now()
		}()
	}
	wg.Wait()
	for i, o := range out {
		if o.err != nil {
			t.Fatalf("terminate of %s: %v", ids[i], o.err)
		}
	}

	recs := c.records()
	firstHolder := recs[first(recs, "", "holding the removal token")].Instance
	a, b := 0, 1
	if firstHolder == ids[1] {
		a, b = 1, 0
	}
	A, B := ids[a], ids[b]
	order := []struct{ who, msg string }{
		{A, "holding the removal token"},
		{B, "waiting for the removal token"},
		{A, "broker stopped and its data volume unmounted"},
		{A, "removal token given back"},
		{A, "slot handed back"},
		{B, "holding the removal token"},
		{B, "removal not safe yet"},
		{B, "ALERT: unsafe termination forced"},
		{B, "broker stopped and its data volume unmounted"},
		{B, "slot handed back"},
	}
	at := -1
	var excerpt []string
	for _, o := range order {
		i := first(recs, o.who, o.msg)
		if i <= at {
			t.Errorf("%q of %s is at log record %d, not after record %d: the order is wrong", o.msg, o.who, i, at)
		}
		if i >= 0 {
			role := map[string]string{A: "first", B: "second"}[o.who]
			excerpt = append(excerpt, fmt.Sprintf("%s %-6s %s %s", recs[i].At.Format("15:04:05.000"), role, recs[i].Message, shorten(recs[i].Reason, 110)))
			at = i
		}
	}
	t.Logf("the order, from the log:\n%s", strings.Join(excerpt, "\n"))

	ra, rb := out[a].res, out[b].res
	if ra.Forced || ra.Outcome != terminate.OutcomeReleased || !ra.Stopped {
		t.Errorf("first removal %+v, want a safe, unforced release with the broker stopped", ra)
	}
	if !rb.Forced || rb.Outcome != terminate.OutcomeReleased || rb.SafetyChecks < 2 || rb.TokenWaitMS <= 0 {
		t.Errorf("second removal %+v, want a release forced after waiting for the token and several unsafe checks", rb)
	}
	// Its verdicts were all taken after the first broker left (its CONTINUE).
	var aDone time.Time
	for _, cl := range h.Completions() {
		if cl.InstanceID == A {
			aDone = cl.At
		}
	}
	firstCheck := recs[first(recs, B, "removal not safe yet")].At
	if aDone.IsZero() || !firstCheck.After(aDone) {
		t.Errorf("the second removal's first verdict (%s) is not after the first broker's CONTINUE (%s)", firstCheck, aDone)
	}
	if !strings.Contains(recs[first(recs, B, "removal not safe yet")].Reason, "at min.insync.replicas with this broker in the ISR") {
		t.Errorf("the second removal was unsafe for another reason: %s", recs[first(recs, B, "removal not safe yet")].Reason)
	}
	// Forced only at its bound.
	alertAt := recs[first(recs, B, "ALERT: unsafe termination forced")].At
	if waited := alertAt.Sub(out[b].began); waited < bound {
		t.Errorf("the second removal was forced %s after its event, before its bound %s", waited, bound)
	}
	if !strings.Contains(c.metrics.String(), "UnsafeTerminationsForced") {
		t.Errorf("no UnsafeTerminationsForced metric")
	}
	if n := forcedDetaches(h); n != 0 {
		t.Errorf("%d forced detaches, want none (both brokers were stopped and unmounted)", n)
	}
	if tok, err := c.store.GetRemoval(context.Background()); err != nil || tok.Held() {
		t.Errorf("removal token after both: %+v, %v; want free", tok, err)
	}
	t.Logf("first removal: released after %s; second: waited %d ms for the token, %d unsafe checks after the first left, forced %s after its event (bound %s)",
		out[a].ended.Sub(out[a].began).Round(time.Millisecond), rb.TokenWaitMS, rb.SafetyChecks, alertAt.Sub(out[b].began).Round(time.Millisecond), bound)
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// handover delivers the terminate event of the slot holder old and the launch event
// of its replacement at the same time, as Auto Scaling does for a health replacement
// (the replacement launches while the old instance waits in Terminating:Wait), and
// checks the handover: the replacement waits, and binds the slot after the release,
// with the same ENI and volume; no ABANDON; the stop-and-unmount command precedes
// every detach; nothing is forced.
func handover(t *testing.T, h *harness.Harness, c *cluster, k *kafkaCluster, old string, s int) (terminate.Result, launch.Result) {
	t.Helper()
	replacement := c.run(s % 3)
	c.inGroup("Pending:Wait", "Healthy", replacement)
	enis, vols := c.enis(s), c.volumes(s)
	term := c.terminate(k.client(t))
	h.ResetCounts()
	var tres terminate.Result
	var lres launch.Result
	var terr, lerr error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); tres, terr = runTerminate(t, term, c.terminateEvent(old), "terminate-old") }()
	go func() {
		defer wg.Done()
		lres, lerr = runLaunch(t, c.launch, c.launchEvent(replacement), "launch-replacement")
	}()
	wg.Wait()
	if terr != nil || lerr != nil {
		t.Fatalf("terminate: %v; launch: %v", terr, lerr)
	}
	if got := c.completionsOf(replacement, "slotkeeper-launch"); !slices.Equal(got, []string{"CONTINUE"}) {
		t.Errorf("replacement completions %v, want one CONTINUE (no ABANDON)", got)
	}
	if got := c.completionsOf(old, "slotkeeper-terminate"); !slices.Equal(got, []string{"CONTINUE"}) {
		t.Errorf("old holder's terminate completions %v, want one CONTINUE", got)
	}
	if lres.Outcome != launch.OutcomeContinue || lres.Slot != s {
		t.Errorf("launch result %+v, want CONTINUE for slot %d", lres, s)
	}
	l := c.lease(s)
	e, v := c.enis(s), c.volumes(s)
	if l.State != lease.Bound || l.Holder != replacement || l.LastHolder != old || e[0].ID != enis[0].ID || v[0].ID != vols[0].ID ||
		e[0].AttachedTo != replacement || v[0].AttachedTo != replacement {
		t.Errorf("slot %d: lease %s by %s (last %s), ENI %+v, volume %+v; want bound by the replacement with ENI %s and volume %s",
			s, l.State, l.Holder, l.LastHolder, e, v, enis[0].ID, vols[0].ID)
	}
	recs := c.records()
	wait, release, claim := first(recs, replacement, "no free slot; waiting for a leaving holder"), first(recs, old, "slot handed back"),
		first(recs, replacement, "handover: the leaving holder released the slot")
	if wait < 0 || release < 0 || claim < 0 || !(wait < release && release < claim) {
		t.Errorf("log records: replacement waits at %d, old holder released at %d, replacement claims at %d; want them in that order", wait, release, claim)
	}
	calls := h.MutatingCalls()
	stop := slices.Index(calls, "SendCommand")
	for i, a := range calls {
		if strings.HasPrefix(a, "Detach") && (stop < 0 || i < stop) {
			t.Errorf("%s at call %d before the stop-and-unmount command (at %d): %v", a, i, stop, calls)
		}
	}
	if n := forcedDetaches(h); n != 0 {
		t.Errorf("%d forced detaches (%v), want none", n, detaches(h))
	}
	if cmds := c.ssmCommands(old); len(cmds) != 1 || !strings.Contains(cmds[0][1], "umount") {
		t.Errorf("SSM commands to the old holder %q, want one stop-and-unmount", cmds)
	}
	if wait >= 0 && claim >= 0 {
		t.Logf("the replacement waited %s for the handover; mutating calls %v; detaches %v",
			recs[claim].At.Sub(recs[wait].At).Round(time.Millisecond), mutating(h), detaches(h))
	}
	return tres, lres
}

// Must show 2: a health replacement. The terminate of an Unhealthy, running holder and
// the launch of its replacement are delivered at the same time.
func TestHealthReplacementHandsOver(t *testing.T) {
	h := harness.Start(t)
	k := newKafka(t, 3)
	var cp atomic.Pointer[cluster]
	stopsBrokers(h, &cp, k)
	c := newCluster(t, h, 3, nil)
	cp.Store(c)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	c.inGroup("InService", "Healthy", ids[0], ids[2])
	c.inGroup("Terminating:Wait", "Unhealthy", ids[1])
	tres, _ := handover(t, h, c, k, ids[1], 1)
	if tres.Planned || !tres.Stopped || tres.SafetyChecks < 1 || tres.Forced {
		t.Errorf("terminate result %+v, want an unplanned termination that still passed the safety gate and stopped the broker", tres)
	}
}

// Must show 3: `slotctl evict` of a broker: the same handover, through the planned path.
func TestEvictHandsOver(t *testing.T) {
	h := harness.Start(t)
	k := newKafka(t, 3)
	var cp atomic.Pointer[cluster]
	stopsBrokers(h, &cp, k)
	c := newCluster(t, h, 3, map[string]string{"KAFKA_BOOTSTRAP": strings.Join(k.Addrs, ",")})
	cp.Store(c)
	c.createGroup()
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	c.inGroup("InService", "Healthy", ids...)

	h.ResetCounts()
	r := c.slotctl("evict", "1", "--yes", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"done": true`) {
		t.Fatalf("slotctl evict 1: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if got := h.GroupTerminations(); !slices.Equal(got, []string{ids[1]}) {
		t.Fatalf("evict asked the group to terminate %v, want %s", got, ids[1])
	}
	if gi, _ := h.GroupInstanceOf(ids[1]); gi.LifecycleState != "Terminating:Wait" {
		t.Fatalf("the evicted instance is %s in its group, want Terminating:Wait", gi.LifecycleState)
	}
	var ev slotctl.Eviction
	if err := json.Unmarshal([]byte(r.stdout), &ev); err != nil || !ev.Done || ev.Instance != ids[1] {
		t.Fatalf("slotctl evict document %q: %+v, %v", r.stdout, ev, err)
	}
	t.Logf("slotctl evict 1 --yes: %s in %s terminating (%s), removal safety: %s", ev.Instance, ev.Group, ev.Activity, ev.Safety)
	tres, _ := handover(t, h, c, k, ids[1], 1)
	if !tres.Planned || !tres.Stopped || tres.SafetyChecks < 1 || tres.Forced {
		t.Errorf("terminate result %+v, want a planned termination, safe, with the broker stopped", tres)
	}
}

// Must show 4: the drain's response lost, and two concurrent deliveries of one
// terminate event: one SSM stop, detach and release before the one accepted CONTINUE,
// in that order.
func TestTerminateDrainLostAndDuplicates(t *testing.T) {
	h := harness.Start(t)
	k := newKafka(t, 3)
	setup := func(t *testing.T) (*cluster, []string) {
		c := newCluster(t, h, 3, nil)
		ids := []string{c.run(0), c.run(1), c.run(2)}
		c.launchAll(ids...)
		h.ResetCounts()
		return c, ids
	}
	// check asserts the order of the leaving instance's mutating calls.
	check := func(t *testing.T, c *cluster, id string) {
		t.Helper()
		calls := mutating(h)
		count := func(a string) int {
			n := 0
			for _, x := range calls {
				if x == a {
					n++
				}
			}
			return n
		}
		if n := count("SendCommand"); n != 1 {
			t.Errorf("%d SSM commands, want 1: %v", n, calls)
		}
		if got := c.completionsOf(id, "slotkeeper-terminate"); !slices.Equal(got, []string{"CONTINUE"}) {
			t.Errorf("accepted completions %v, want one CONTINUE", got)
		}
		stop, detach, complete := slices.Index(calls, "SendCommand"), slices.Index(calls, "DetachVolume"), slices.Index(calls, "CompleteLifecycleAction")
		release := -1
		for i, body := range h.Bodies("UpdateItem") {
			if strings.Contains(string(body), `"free"`) && strings.Contains(string(body), "last_holder") && strings.Contains(string(body), `"N":"1"`) {
				release = i
			}
		}
		// The release is an UpdateItem: find its position among the calls.
		pos, seen := -1, -1
		for i, a := range calls {
			if a == "UpdateItem" {
				seen++
				if seen == release {
					pos = i
				}
			}
		}
		if !(stop >= 0 && stop < detach && detach < pos && pos < complete) {
			t.Errorf("order: stop at %d, detach at %d, release at %d, CONTINUE at %d in %v; want stop < detach < release < CONTINUE", stop, detach, pos, complete, calls)
		}
		l := c.lease(1)
		drains := 0
		for _, tr := range l.History {
			if tr.To == lease.Draining {
				drains++
			}
		}
		if l.State != lease.Free || l.LastHolder != id || drains != 1 {
			t.Errorf("lease %s, last holder %s, %d drains in its history; want free after one drain", l.State, l.LastHolder, drains)
		}
		t.Logf("mutating calls: %v", calls)
	}

	t.Run("drain's response lost", func(t *testing.T) {
		c, ids := setup(t)
		// UpdateItem #1 records the removal's start on the lease, #2 takes the removal
		// token, #3 is the drain.
		h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.LostResponse, Skip: 2, Times: 1})
		defer h.ClearFaults()
		res, err := runTerminate(t, c.terminate(k.client(t)), c.terminateEvent(ids[1]), "lost-drain")
		if err != nil || res.Outcome != terminate.OutcomeReleased || !res.Stopped {
			t.Fatalf("terminate with the drain's response lost: %+v, %v; want the slot released after a stop", res, err)
		}
		check(t, c, ids[1])
	})

	t.Run("two concurrent deliveries", func(t *testing.T) {
		c, ids := setup(t)
		term := c.terminate(k.client(t))
		payload := c.terminateEvent(ids[1])
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = invokeWith(term, payload) }()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Logf("a concurrent delivery left the removal to the other and is redelivered: %v", err)
				if err := invokeWith(term, payload); err != nil {
					t.Fatalf("redelivery: %v", err)
				}
			}
		}
		check(t, c, ids[1])
	})

	t.Run("a delivery that died silently is carried on once its stamp expires", func(t *testing.T) {
		c, ids := setup(t)
		l := c.lease(1)
		// An earlier delivery took the token and died without a word (a crash, an
		// out-of-memory kill, a timeout): nothing renews its stamp, which expires in 3 s.
		tok, err := c.store.GetRemoval(context.Background())
		if err == nil {
			_, err = c.store.TakeRemoval(context.Background(), tok, lease.Remover{Slot: 1, Instance: ids[1], LeaseVersion: l.Version,
				Invocation: "terminate/dead", Until: time.Now().Add(3 * time.Second)}, "test")
		}
		if err != nil {
			t.Fatal(err)
		}
		term := c.terminate(k.client(t))
		payload := c.terminateEvent(ids[1])
		// Lambda's retry comes while the stamp is still live: it waits (with
		// heartbeats) instead of failing, and carries the removal on once it expires.
		began := time.Now()
		if err := invokeWith(term, payload); err != nil {
			t.Fatalf("the retry of a delivery that died: %v; want it to wait for the dead stamp and carry on", err)
		}
		recs := c.records()
		i := first(recs, ids[1], "holding the removal token")
		if i < 0 || !strings.Contains(recs[i].Reason, "carrying on the removal of an earlier delivery (terminate/dead)") ||
			recs[i].At.Sub(began) < 2*time.Second {
			t.Errorf("the retry did not carry on the dead delivery's removal after its stamp expired: %+v", recs[max(i, 0)])
		}
		check(t, c, ids[1])
		t.Logf("the retry waited %s for the dead delivery's stamp, then carried the removal on",
			recs[i].At.Sub(began).Round(10*time.Millisecond))
	})

	t.Run("a concurrent duplicate waits for the working delivery and then changes nothing", func(t *testing.T) {
		c, ids := setup(t)
		term := c.terminate(k.client(t))
		// A stamp lives 1.2 s unless renewed (every 600 ms: slack enough for a renewal
		// on a loaded machine); the first delivery's stop takes 3 s, so only its
		// renewals keep the duplicate from taking the removal over.
		term.StampTTL = 1200 * time.Millisecond
		// The duplicate waits for the working delivery within the removal's bound: room
		// for the whole slow stop, detaches and release on a loaded machine.
		term.SafetyMaxWait = 15 * time.Second
		payload := c.terminateEvent(ids[1])
		// The first delivery is slow to stop the broker; the duplicate arrives while
		// it works and finds the token stamped by it.
		h.Inject(harness.Fault{Action: "SendCommand", Kind: harness.Latency, Latency: 3 * time.Second, Times: 1})
		defer h.ClearFaults()
		var firstErr, dupErr error
		var dup terminate.Result
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); firstErr = invokeWith(term, payload) }()
		for first(c.records(), ids[1], "holding the removal token") < 0 {
			time.Sleep(10 * time.Millisecond)
		}
		dup, dupErr = runTerminate(t, term, payload, "duplicate")
		wg.Wait()
		if firstErr != nil || dupErr != nil {
			t.Fatalf("first delivery: %v; duplicate: %v; want both to succeed (no retry, nothing for the dead-letter queue)", firstErr, dupErr)
		}
		if dup.Outcome != terminate.OutcomeIgnored && dup.Outcome != terminate.OutcomeNoSlot {
			t.Errorf("duplicate %+v, want it to change nothing once the first delivery completed the action", dup)
		}
		if !strings.Contains(c.logs.String(), "another delivery of this event") {
			t.Errorf("the duplicate did not say it waited for the other delivery")
		}
		check(t, c, ids[1])
		t.Logf("duplicate: outcome %s (%s)", dup.Outcome, shorten(dup.Reason, 120))
	})
}

// Must show 5: a holder in shutting-down. Its volume leaves it with a plain detach;
// the detach is forced only once the instance is terminated, or past the bound, with
// an ALERT, a metric and an SNS message.
func TestShuttingDownHolderPlainDetach(t *testing.T) {
	h := harness.Start(t)
	k := newKafka(t, 3)
	setup := func(t *testing.T) (*cluster, []string, *terminate.Handler) {
		c := newCluster(t, h, 3, nil)
		ids := []string{c.run(0), c.run(1), c.run(2)}
		c.launchAll(ids...)
		// The instance is shutting down (terminated outside the group, or its hook
		// expired): its OS may still be stopping Kafka and holds the volume.
		h.SetInstanceState(ids[1], "shutting-down")
		h.HoldPlainDetach(ids[1], true)
		t.Cleanup(func() { h.HoldPlainDetach(ids[1], false); h.SetInstanceState(ids[1], "") })
		term := c.terminate(k.client(t))
		term.ForceDetachAfter = 2 * time.Second
		h.ResetCounts()
		return c, ids, term
	}

	t.Run("forced only after terminated", func(t *testing.T) {
		c, ids, term := setup(t)
		var flipped time.Time
		done := make(chan struct{})
		go func() {
			defer close(done)
			for len(h.Bodies("DetachVolume")) == 0 {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // a plain detach pending for a while
			flipped = time.Now()
			h.SetInstanceState(ids[1], "terminated")
		}()
		res, err := runTerminate(t, term, c.terminateEvent(ids[1]), "shutting-down-1")
		<-done
		if err != nil || res.Planned || res.Stopped || res.Outcome != terminate.OutcomeReleased {
			t.Fatalf("terminate: %+v, %v; want an unplanned release without a stop command", res, err)
		}
		d := detaches(h)
		if len(d) < 2 || d[0] != "DetachVolume force=false" || d[1] != "DetachVolume force=true" {
			t.Fatalf("volume detaches %v, want a plain one, then a forced one", d)
		}
		if len(c.ssmCommands(ids[1])) != 0 {
			t.Errorf("a stop command was sent to a shutting-down instance")
		}
		if strings.Contains(c.logs.String(), "ALERT") {
			t.Errorf("a force on a terminated instance alerted: nothing can run there")
		}
		recs := c.records()
		forced := first(recs, ids[1], "plain detach not done and the instance is halted")
		if forced < 0 || recs[forced].At.Before(flipped) {
			t.Errorf("the force (log record %d) is not after the instance was terminated at %s", forced, flipped.Format("15:04:05.000"))
		}
		if v := c.volumes(1); v[0].AttachedTo != "" || c.lease(1).State != lease.Free {
			t.Errorf("volume %+v, lease %s: want detached and free", v, c.lease(1).State)
		}
		plain := first(recs, ids[1], "step start")
		for i, r := range recs {
			if r.Instance == ids[1] && r.Step == "detach" {
				plain = i
				break
			}
		}
		t.Logf("detaches %v: the plain detach pending from %s, the instance terminated at %s, forced at %s",
			d, recs[plain].At.Format("15:04:05.000"), flipped.Format("15:04:05.000"), recs[forced].At.Format("15:04:05.000"))
	})

	t.Run("forced at the bound, loudly", func(t *testing.T) {
		c, ids, term := setup(t)
		topic, err := sns.NewFromConfig(h.DirectConfig()).CreateTopic(context.Background(), &sns.CreateTopicInput{Name: aws.String(c.cfg.Cluster + "-alerts")})
		if err != nil {
			t.Fatal(err)
		}
		term.Alerts = &alert.Notifier{SNS: sns.NewFromConfig(h.AWSConfig()), TopicARN: aws.ToString(topic.TopicArn), Cluster: c.cfg.Cluster}
		began := time.Now()
		res, err := runTerminate(t, term, c.terminateEvent(ids[1]), "shutting-down-2")
		if err != nil || res.Outcome != terminate.OutcomeReleased {
			t.Fatalf("terminate: %+v, %v", res, err)
		}
		recs := c.records()
		alertAt := first(recs, ids[1], "ALERT: forced detach")
		if alertAt < 0 || recs[alertAt].At.Sub(began) < term.ForceDetachAfter {
			t.Fatalf("ALERT at record %d; want one, no earlier than %s after the event", alertAt, term.ForceDetachAfter)
		}
		d := detaches(h)
		if len(d) < 2 || d[0] != "DetachVolume force=false" || d[1] != "DetachVolume force=true" {
			t.Errorf("volume detaches %v, want a plain one, then a forced one", d)
		}
		if !strings.Contains(c.metrics.String(), "ForcedDetaches") || h.Calls("Publish") != 1 {
			t.Errorf("metric ForcedDetaches present: %v; SNS publishes %d, want 1", strings.Contains(c.metrics.String(), "ForcedDetaches"), h.Calls("Publish"))
		}
		t.Logf("forced %s after the event (bound %s): %s", recs[alertAt].At.Sub(began).Round(time.Millisecond), term.ForceDetachAfter, shorten(recs[alertAt].Line, 300))
	})
}

// Must show 6: a foreign hook name, a launch into the warm pool and an expired action
// make no mutating call, each with a log line saying why.
func TestForeignHookWarmPoolAndExpiredActions(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	term := c.terminate(nil)
	id := c.run(0)
	bound := c.run(1)
	c.launchAll(bound)
	edit := func(payload []byte, f func(d map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(payload, &m); err != nil {
			t.Fatal(err)
		}
		f(m["detail"].(map[string]any))
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name    string
		handler func([]byte) error
		payload []byte
		before  func()
		log     string
		calls   int // AWS calls allowed: the one heartbeat AWS refuses for an expired action
	}{
		{"launch of another hook", c.invoke, edit(c.launchEvent(id), func(d map[string]any) { d["LifecycleHookName"] = "web-warmup" }), nil, `lifecycle hook \"web-warmup\" is not \"slotkeeper-launch\"`, 0},
		{"terminate of another hook", func(p []byte) error { return invokeWith(term, p) },
			edit(c.terminateEvent(bound), func(d map[string]any) { d["LifecycleHookName"] = "drain-logs" }), nil, `lifecycle hook \"drain-logs\" is not \"slotkeeper-terminate\"`, 0},
		{"launch into the warm pool", c.invoke, edit(c.launchEvent(id), func(d map[string]any) { d["Origin"], d["Destination"] = "EC2", "WarmPool" }), nil, "launching into the warm pool", 0},
		{"expired launch action", c.invoke, c.launchEvent(id), func() { h.ExpireLifecycleAction(c.cfg.ASGName, "slotkeeper-launch", id) },
			"the lifecycle action is no longer active", 1},
		{"expired terminate action", func(p []byte) error { return invokeWith(term, p) }, c.terminateEvent(bound),
			func() { h.ExpireLifecycleAction(c.cfg.ASGName, "slotkeeper-terminate", bound) }, "the lifecycle action is no longer active", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before()
			}
			h.ResetCounts()
			from := len(c.logs.String())
			if err := tt.handler(tt.payload); err != nil {
				t.Fatalf("want a logged no-op, got %v", err)
			}
			if got := h.MutatingCalls(); len(got) > tt.calls || (tt.calls == 1 && len(got) == 1 && got[0] != "RecordLifecycleActionHeartbeat") {
				t.Errorf("mutating calls %v, want none (apart from the heartbeat AWS refuses)", got)
			}
			if n := sum(h.CallCounts()); n != tt.calls {
				t.Errorf("%d AWS calls %v, want %d", n, h.CallCounts(), tt.calls)
			}
			logged := c.logs.String()[from:]
			i := strings.Index(logged, `"message":"ignoring event"`)
			if i < 0 || !strings.Contains(logged, tt.log) {
				t.Fatalf("log %q lacks the no-op line with %q", logged, tt.log)
			}
			line := logged[strings.LastIndex(logged[:i], "\n")+1:]
			line = line[:strings.Index(line, "\n")]
			var r logRecord
			_ = json.Unmarshal([]byte(line), &r)
			t.Logf("%d AWS calls %v; log: %s: %s", sum(h.CallCounts()), h.CallCounts(), r.Message, r.Reason)
		})
	}
	if l := c.lease(0); l.Exists() {
		t.Errorf("slot 0 was touched: %+v", l)
	}
	if l := c.lease(1); l.State != lease.Bound || l.Holder != bound {
		t.Errorf("slot 1 changed: %+v", l)
	}
}

// Must show 9 (against a Kafka that answers DescribeQuorum): a controller voter whose
// removal would leave no caught-up majority is held back, with the same bound, alert
// and metric as the partition rule, and goes once the quorum has caught up.
func TestTerminateWaitsForControllerQuorum(t *testing.T) {
	h := harness.Start(t)
	setup := func(t *testing.T) (*cluster, *kafkaCluster, []string) {
		c := newCluster(t, h, 3, nil)
		ids := []string{c.run(0), c.run(1), c.run(2)}
		c.launchAll(ids...)
		return c, newKafka(t, 3), ids
	}
	// Voter 2 is 10 s behind the leader: removing voter 1 leaves only the leader (0)
	// caught up, 1 of the 3 voters' majority of 2.
	lagging := func(k *kafkaCluster) {
		k.SetQuorum(kafkatestQuorum(0, []int32{0, 1, 2}, map[int32]time.Duration{2: 10 * time.Second}))
	}

	t.Run("held until the quorum catches up", func(t *testing.T) {
		c, k, ids := setup(t)
		lagging(k)
		term := c.terminate(k.client(t))
		term.SafetyMaxWait = 30 * time.Second
		caughtUp := make(chan struct{})
		go func() {
			for strings.Count(c.logs.String(), "removal not safe yet") < 2 {
				time.Sleep(10 * time.Millisecond)
			}
			k.SetQuorum(kafkatestQuorum(0, []int32{0, 1, 2}, nil))
			close(caughtUp)
		}()
		res, err := runTerminate(t, term, c.terminateEvent(ids[1]), "quorum-1")
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-caughtUp:
		default:
			t.Fatal("the termination went ahead while the quorum was behind")
		}
		if res.Forced || res.SafetyChecks < 3 || res.Outcome != terminate.OutcomeReleased {
			t.Errorf("result %+v, want an unforced release after several checks", res)
		}
		recs := c.records()
		held := recs[first(recs, ids[1], "removal not safe yet")].Reason
		if !strings.Contains(held, "controller 1 may not leave: only 1 caught-up voters [0] would remain of [0 1 2], a majority is 2") {
			t.Errorf("the hold does not name the quorum rule: %s", held)
		}
		t.Logf("held %d checks: %s", res.SafetyChecks, shorten(held, 200))
	})

	t.Run("forced at the bound with the alert and metric", func(t *testing.T) {
		c, k, ids := setup(t)
		lagging(k)
		term := c.terminate(k.client(t))
		term.SafetyMaxWait = 500 * time.Millisecond
		res, err := runTerminate(t, term, c.terminateEvent(ids[1]), "quorum-2")
		if err != nil {
			t.Fatal(err)
		}
		if !res.Forced || !strings.Contains(c.metrics.String(), "UnsafeTerminationsForced") {
			t.Errorf("result %+v; metric present %v; want a forced release and the metric", res, strings.Contains(c.metrics.String(), "UnsafeTerminationsForced"))
		}
		recs := c.records()
		i := first(recs, ids[1], "ALERT: unsafe termination forced")
		if i < 0 || !strings.Contains(recs[i].Line, "controller 1 may not leave") {
			t.Errorf("no ALERT naming the quorum rule")
		}
	})

	t.Run("a broker that is no voter is not held by the quorum", func(t *testing.T) {
		c, k, ids := setup(t)
		k.SetQuorum(kafkatestQuorum(0, []int32{0, 2}, map[int32]time.Duration{2: 10 * time.Second}))
		res, err := runTerminate(t, c.terminate(k.client(t)), c.terminateEvent(ids[1]), "quorum-3")
		if err != nil || res.Forced || res.SafetyChecks != 1 {
			t.Errorf("result %+v, %v: want one safe check (broker 1 is not a voter)", res, err)
		}
	})

	// A cluster without a KRaft quorum to describe (ZooKeeper mode, or brokers before
	// Kafka 3.3) is judged by the partition rule alone, with one warning per
	// invocation; a quorum that could not be read just now still means "not safe".
	for _, tc := range []struct {
		name   string
		script func(k *kafkaCluster)
		forced bool
	}{
		{"DescribeQuorum not advertised: the partition rule decides", func(k *kafkaCluster) { k.HideQuorumAPI() }, false},
		{"UNSUPPORTED_VERSION: the partition rule decides", func(k *kafkaCluster) { k.SetQuorum(kafkatest.Quorum{Leader: -1, ErrorCode: 35}) }, false},
		{"a transient error stays not safe", func(k *kafkaCluster) { k.SetQuorum(kafkatest.Quorum{Leader: -1, ErrorCode: 7}) }, true}, // REQUEST_TIMED_OUT
		{"not advertised, a partition at min ISR with the broker in it: warned once, held by the partition rule", func(k *kafkaCluster) {
			k.HideQuorumAPI()
			k.SetISR("orders", 0, 1, 2)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, k, ids := setup(t)
			tc.script(k)
			term := c.terminate(k.client(t))
			term.SafetyMaxWait = time.Second
			from := len(c.logs.String())
			res, err := runTerminate(t, term, c.terminateEvent(ids[1]), "no-quorum")
			if err != nil || res.Forced != tc.forced || res.Outcome != terminate.OutcomeReleased {
				t.Fatalf("result %+v, %v; want forced %v", res, err, tc.forced)
			}
			logged := c.logs.String()[from:]
			warned := strings.Count(logged, `"message":"the controller quorum rule does not apply`)
			switch {
			case !tc.forced && (warned != 1 || res.SafetyChecks != 1):
				t.Errorf("%d warnings, %d checks; want one warning and one safe check", warned, res.SafetyChecks)
			case tc.forced && !strings.Contains(logged, "ALERT: unsafe termination forced"):
				t.Errorf("the removal was not forced with the ALERT")
			case tc.forced && warned != strings.Count(tc.name, "warned once"):
				t.Errorf("%d warnings over %d checks, want %d", warned, res.SafetyChecks, strings.Count(tc.name, "warned once"))
			}
			t.Logf("forced %v after %d checks, %d warning(s)", res.Forced, res.SafetyChecks, warned)
		})
	}
}

// A launch that finds its AZ's slot held by a leaving holder that does not let go
// within the handover bound does not abandon: it fails, to be delivered again, and
// changes nothing.
func TestHandoverTimeoutIsRetriedNotAbandoned(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	old := c.run(0)
	c.launchAll(old)
	// A termination is draining the slot (and takes its time).
	if _, err := c.store.Drain(context.Background(), c.lease(0), "terminating"); err != nil {
		t.Fatal(err)
	}
	replacement := c.run(0)
	c.launch.HandoverMaxWait = 300 * time.Millisecond
	c.launch.HeartbeatInterval = 50 * time.Millisecond
	h.ResetCounts()
	_, err := runLaunch(t, c.launch, c.launchEvent(replacement), "handover-timeout")
	if err == nil || !strings.Contains(err.Error(), "has not released it") {
		t.Fatalf("launch: %v, want a retryable error naming the handover", err)
	}
	if got := c.completions(replacement); len(got) != 0 {
		t.Errorf("completions %v, want none: the event is retried", got)
	}
	if got := mutating(h); len(got) != 0 {
		t.Errorf("mutating calls %v, want none (heartbeats aside)", got)
	}
	n := 0
	for _, hb := range h.Heartbeats() {
		if hb.InstanceID == replacement {
			n++
		}
	}
	if n < 2 {
		t.Errorf("%d heartbeats while waiting, want the first and more", n)
	}
}

// The fence before a create or attach requires the lease claimed by this instance: a
// redelivered launch whose slot is draining meanwhile attaches nothing.
func TestLaunchFenceRequiresClaimed(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	id := c.run(0)
	// An earlier delivery claimed the slot; since then a termination drains it.
	cur := c.lease(0)
	l, err := c.store.Claim(context.Background(), cur, id, "us-east-1a", "launch")
	if err == nil {
		_, err = c.store.Drain(context.Background(), l, "terminating")
	}
	if err != nil {
		t.Fatal(err)
	}
	h.ResetCounts()
	if err := c.invoke(c.launchEvent(id)); err != nil {
		t.Fatal(err)
	}
	for _, a := range mutating(h) {
		if strings.HasPrefix(a, "Create") || strings.HasPrefix(a, "Attach") {
			t.Errorf("%s on a draining lease", a)
		}
	}
	if got := c.completions(id); !slices.Equal(got, []string{"ABANDON"}) {
		t.Errorf("completions %v, want ABANDON", got)
	}
}

// createGroup creates the cluster's Auto Scaling group at moto with both lifecycle
// hooks, so that slotctl finds them (its instances are modelled by the harness).
func (c *cluster) createGroup() {
	c.t.Helper()
	ctx := context.Background()
	direct := c.h.DirectConfig()
	if _, err := ec2.NewFromConfig(direct).CreateLaunchTemplate(ctx, &ec2.CreateLaunchTemplateInput{
		LaunchTemplateName: aws.String(c.cfg.Cluster + "-broker"),
		LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(c.w.AMI), InstanceType: ec2types.InstanceTypeT3Large},
	}); err != nil {
		c.t.Fatal(err)
	}
	asg := autoscaling.NewFromConfig(direct)
	if _, err := asg.CreateAutoScalingGroup(ctx, &autoscaling.CreateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String(c.cfg.ASGName), MinSize: aws.Int32(0), MaxSize: aws.Int32(3), DesiredCapacity: aws.Int32(0),
		LaunchTemplate:    &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String(c.cfg.Cluster + "-broker"), Version: aws.String("$Latest")},
		VPCZoneIdentifier: aws.String(strings.Join(c.cfg.Subnets, ",")),
	}); err != nil {
		c.t.Fatal(err)
	}
	for _, hk := range [][3]string{{"slotkeeper-launch", "autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"}, {"slotkeeper-terminate", "autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE"}} {
		if _, err := asg.PutLifecycleHook(ctx, &autoscaling.PutLifecycleHookInput{
			AutoScalingGroupName: aws.String(c.cfg.ASGName), LifecycleHookName: aws.String(hk[0]),
			LifecycleTransition: aws.String(hk[1]), DefaultResult: aws.String(hk[2]), HeartbeatTimeout: aws.Int32(900),
		}); err != nil {
			c.t.Fatal(err)
		}
	}
}

func kafkatestQuorum(leader int32, voters []int32, behind map[int32]time.Duration) kafkatest.Quorum {
	return kafkatest.Quorum{Leader: leader, Voters: voters, Behind: behind}
}

// slotctlRun is one run of slotctl.
type slotctlRun struct {
	code           int
	stdout, stderr string
}

// slotctl runs slotctl with args against this cluster, through the proxy, configured
// by the cluster's variables.
func (c *cluster) slotctl(args ...string) slotctlRun {
	c.t.Helper()
	var out, errOut strings.Builder
	code := slotctl.Main(context.Background(), args, slotctl.IO{
		Stdout: &out, Stderr: &errOut, Clients: slotctl.NewClients(c.h.AWSConfig()),
		Getenv: func(k string) string { return c.vars[strings.TrimPrefix(k, config.Prefix)] },
	})
	return slotctlRun{code: code, stdout: out.String(), stderr: errOut.String()}
}

// The result of the stop-and-unmount command is checked: when it fails (here: the
// filesystem is still in use), the volume and ENI stay on the instance, which may still
// run Kafka, and an ALERT says so; the slot is released all the same. The replacement
// then waits until the old instance no longer runs, detaches plainly while it shuts
// down, and gets the volume once it is terminated: nothing is ever forced off an
// instance that may run Kafka.
func TestFailedStopLeavesTheVolumeAttached(t *testing.T) {
	h := harness.Start(t)
	var failing atomic.Bool
	h.Override(harness.Override{Action: "GetCommandInvocation", Rewrite: func(_, resp []byte) []byte {
		if !failing.Load() {
			return resp
		}
		var m map[string]any
		if json.Unmarshal(resp, &m) != nil {
			return resp
		}
		m["Status"], m["StatusDetails"], m["ResponseCode"] = "Failed", "Failed", hostcmd.ExitMountBusy
		m["StandardErrorContent"] = "slotkeeper-stop: /var/lib/kafka is still in use: USER PID ACCESS COMMAND kafka 4242 ..c.. java"
		b, _ := json.Marshal(m)
		return b
	}})
	k := newKafka(t, 3)
	c := newCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	c.inGroup("InService", "Healthy", ids...)
	vol := c.volumes(1)[0].ID
	h.ResetCounts()

	failing.Store(true)
	res, err := runTerminate(t, c.terminate(k.client(t)), c.terminateEvent(ids[1]), "failed-stop")
	failing.Store(false)
	if err != nil || res.Stopped || !res.LeftAttached || res.Detached != 0 || res.Outcome != terminate.OutcomeReleased {
		t.Fatalf("terminate after a failed stop: %+v, %v; want the slot released with its resources left attached", res, err)
	}
	if d := detaches(h); len(d) != 0 {
		t.Errorf("detaches %v after a failed stop, want none", d)
	}
	if v := c.volumes(1)[0]; v.AttachedTo != ids[1] {
		t.Errorf("volume %+v, want still attached to %s", v, ids[1])
	}
	if !strings.Contains(c.logs.String(), "ALERT: broker stop failed: volume left attached") || !strings.Contains(c.metrics.String(), "VolumesLeftAttached") {
		t.Errorf("the volume left attached was not signalled (ALERT and metric)")
	}
	if l := c.lease(1); l.State != lease.Free || !slices.Equal(c.completionsOf(ids[1], "slotkeeper-terminate"), []string{"CONTINUE"}) {
		t.Errorf("lease %s, completions %v: want free and one CONTINUE", l.State, c.completionsOf(ids[1], "slotkeeper-terminate"))
	}

	// The group goes on with the termination; the replacement launches meanwhile.
	c.inGroup("Terminating:Proceed", "Healthy", ids[1])
	replacement := c.run(1)
	h.ResetCounts()
	var shutdown, terminated time.Time
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !strings.Contains(c.logs.String(), "the slot's previous holder is leaving; waiting until it no longer runs") {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		shutdown = time.Now()
		h.HoldPlainDetach(ids[1], true)
		h.SetInstanceState(ids[1], "shutting-down") // Kafka stops with the OS; the volume is held until then
		for len(h.Bodies("DetachVolume")) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		terminated = time.Now()
		h.SetInstanceState(ids[1], "")
		h.HoldPlainDetach(ids[1], false)
		h.TerminateInstance(t, ids[1]) // moto detaches the volume, as EC2 does at termination
	}()
	lres, err := runLaunch(t, c.launch, c.launchEvent(replacement), "after-failed-stop")
	<-done
	if err != nil || lres.Outcome != launch.OutcomeContinue || lres.Slot != 1 {
		t.Fatalf("replacement launch: %+v, %v", lres, err)
	}
	if v := c.volumes(1)[0]; v.ID != vol || v.AttachedTo != replacement {
		t.Errorf("volume %+v, want %s on the replacement", v, vol)
	}
	// A force is allowed only once the old instance is terminated (EC2 detaches the
	// volume at termination; the launch may see the state before the volume).
	recs := c.records()
	for _, body := range h.Bodies("DetachVolume") {
		if !strings.Contains(string(body), "Force=true") {
			continue
		}
		i := first(recs, replacement, "plain detach not done and the instance is halted")
		if i < 0 || recs[i].At.Before(terminated) || !strings.Contains(recs[i].Line, `"state":"terminated"`) {
			t.Errorf("the volume was forced off the old instance before it was terminated: %s", body)
		}
	}
	waited := first(recs, replacement, "the slot's previous holder is leaving")
	t.Logf("stop failed: volume left on %s; the replacement waited from %s, the instance shut down at %s and terminated at %s; detaches %v",
		ids[1], recs[waited].At.Format("15:04:05.000"), shutdown.Format("15:04:05.000"), terminated.Format("15:04:05.000"), detaches(h))
}

// failingStops makes every stop-and-unmount command fail while on is set, as it does
// when Kafka does not stop (exit 4): the broker still runs and stays in every ISR.
func failingStops(h *harness.Harness, on *atomic.Bool) {
	h.Override(harness.Override{Action: "GetCommandInvocation", Rewrite: func(_, resp []byte) []byte {
		if !on.Load() {
			return resp
		}
		var m map[string]any
		if json.Unmarshal(resp, &m) != nil {
			return resp
		}
		m["Status"], m["StatusDetails"], m["ResponseCode"] = "Failed", "Failed", hostcmd.ExitStillActive
		m["StandardErrorContent"] = "slotkeeper-stop: unit kafka is deactivating after the stop command"
		b, _ := json.Marshal(m)
		return b
	}})
}

// A removal whose stop-and-unmount failed releases its slot (its volume stays on the
// instance) but keeps the removal token while its instance runs: its broker may still
// be in every ISR. The next removal therefore waits for the token and is never judged
// safe meanwhile: it leaves only at its bound, with the ALERT. Once the first instance
// no longer runs (terminated, or stopped as when it returns to a warm pool), the token
// is taken over at once.
func TestFailedStopKeepsTheRemovalToken(t *testing.T) {
	h := harness.Start(t)
	var failing atomic.Bool
	failingStops(h, &failing)
	k := newKafka(t, 3)

	for _, tc := range []struct {
		name string
		// halt, when set, is what becomes of the first instance while the second
		// removal waits: "terminated" or "stopped".
		halt string
	}{{"the first instance still runs", ""}, {"the first instance terminates", "terminated"}, {"the first instance stops (a warm-pool return)", "stopped"}} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, h, 3, nil)
			ids := []string{c.run(0), c.run(1), c.run(2)}
			c.launchAll(ids...)
			c.inGroup("Terminating:Wait", "Healthy", ids[0], ids[1])
			term := c.terminate(k.client(t))
			term.SafetyMaxWait = 4 * time.Second

			failing.Store(true)
			ra, err := runTerminate(t, term, c.terminateEvent(ids[1]), "first")
			failing.Store(false)
			if err != nil || !ra.LeftAttached || ra.Stopped {
				t.Fatalf("first removal: %+v %v; want its volume left attached after the failed stop", ra, err)
			}
			tok, err := c.store.GetRemoval(context.Background())
			if err != nil || !tok.Held() || tok.Holder != ids[1] || tok.Stopped || tok.InvocationAlive(time.Now()) {
				t.Fatalf("removal token after the failed stop: %+v, %v; want still held for %s, not stopped, no live invocation", tok, err, ids[1])
			}
			if l := c.lease(1); l.State != lease.Free {
				t.Errorf("first slot %s, want released", l.State)
			}

			began := time.Now()
			if tc.halt != "" {
				go func() {
					time.Sleep(time.Second)
					if tc.halt == "terminated" {
						h.TerminateInstance(t, ids[1])
					} else {
						h.SetInstanceState(ids[1], tc.halt)
					}
				}()
			}
			rb, err := runTerminate(t, term, c.terminateEvent(ids[0]), "second")
			if err != nil {
				t.Fatal(err)
			}
			recs := c.records()
			wait := first(recs, ids[0], "waiting for the removal token")
			if wait < 0 || !strings.Contains(recs[wait].Reason, "not seen stopped") {
				t.Errorf("the second removal did not wait for the token kept by the first one (%d)", wait)
			}
			held := recs[first(recs, ids[0], "holding the removal token")]
			switch tc.halt {
			case "":
				if !rb.Forced || !strings.Contains(c.logs.String(), "ALERT: unsafe termination forced") || time.Since(began) < term.SafetyMaxWait {
					t.Errorf("second removal %+v after %s: want it forced at its bound %s with the ALERT while the first broker may still run",
						rb, time.Since(began).Round(time.Millisecond), term.SafetyMaxWait)
				}
			default:
				if rb.Forced || !strings.Contains(held.Reason, "taken over: "+ids[1]+" is "+tc.halt) {
					t.Errorf("second removal %+v, token %q: want the token taken over once %s is %s, unforced", rb, held.Reason, ids[1], tc.halt)
				}
			}
			t.Logf("second removal: waited %d ms for the token (%s); forced %v; %s", rb.TokenWaitMS, shorten(recs[wait].Reason, 100), rb.Forced, shorten(held.Reason, 90))
		})
	}
}

// holdToken makes the removal of ids[0]'s slot 0 hold the removal token, with a live
// stamp, while that instance runs: every other removal must wait for it.
func holdToken(t *testing.T, c *cluster, instance string) {
	t.Helper()
	l := c.lease(0)
	tok, err := c.store.GetRemoval(context.Background())
	if err == nil {
		_, err = c.store.TakeRemoval(context.Background(), tok, lease.Remover{Slot: 0, Instance: instance, LeaseVersion: l.Version,
			Invocation: "terminate/slow", Until: time.Now().Add(time.Hour)}, "test: a removal that takes long")
	}
	if err != nil {
		t.Fatal(err)
	}
}

// The gate's bound counts from when the removal first asked for the token, recorded on
// its lease: a delivery that dies while waiting does not give its redelivery a fresh
// bound.
func TestGateBoundSurvivesRedeliveries(t *testing.T) {
	h := harness.Start(t)
	k := newKafka(t, 3)
	c := newCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	holdToken(t, c, ids[0])
	term := c.terminate(k.client(t))
	const bound = 4 * time.Second
	term.SafetyMaxWait = bound
	payload := c.terminateEvent(ids[1])

	// The first delivery waits for the token and is killed after 1.5 s.
	began := time.Now()
	ctx, cancel := context.WithCancel(lambdacontext.NewContext(context.Background(), &lambdacontext.LambdaContext{AwsRequestID: "killed"}))
	time.AfterFunc(1500*time.Millisecond, cancel)
	if _, err := term.Run(ctx, payload); err == nil {
		t.Fatal("the killed delivery succeeded")
	}
	l := c.rawLease(1)
	if l["removal_lease_version"] != "1" || l["removal_started_at"] == "" {
		t.Errorf("the lease does not record the removal's start: %v", l)
	}

	// Lambda's retry goes on with the same bound.
	retried := time.Now()
	res, err := runTerminate(t, term, payload, "retry")
	if err != nil {
		t.Fatal(err)
	}
	recs := c.records()
	alert := first(recs, ids[1], "ALERT: unsafe termination forced")
	if alert < 0 || !res.Forced {
		t.Fatalf("retry %+v: want it forced at the bound, with the ALERT", res)
	}
	sinceFirst, sinceRetry := recs[alert].At.Sub(began), recs[alert].At.Sub(retried)
	if sinceFirst < bound || sinceRetry > bound-time.Second {
		t.Errorf("forced %s after the first delivery and %s after the retry; want the bound %s counted from the first delivery",
			sinceFirst.Round(time.Millisecond), sinceRetry.Round(time.Millisecond), bound)
	}
	t.Logf("bound %s: the retry was forced %s after the first delivery began, %s after it began itself",
		bound, sinceFirst.Round(10*time.Millisecond), sinceRetry.Round(10*time.Millisecond))
}

// The gate never runs into the part of the invocation the rest of the removal needs:
// with a bound longer than the invocation allows, it ends GateReserve before the
// deadline, loudly, and the stop, the detaches, the release and CONTINUE still
// happen in the same invocation.
func TestGateEndsBeforeTheInvocationDeadline(t *testing.T) {
	h := harness.Start(t)
	k := newKafka(t, 3)
	c := newCluster(t, h, 3, nil)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	holdToken(t, c, ids[0])
	term := c.terminate(k.client(t))
	term.SafetyMaxWait = 30 * time.Minute // the documented default of old
	term.GateReserve = 6 * time.Second
	const limit = 14 * time.Second // the invocation's whole time

	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: "short"})
	began := time.Now()
	res, err := term.Run(ctx, c.terminateEvent(ids[1]))
	took := time.Since(began)
	if err != nil || !res.Forced || res.Outcome != terminate.OutcomeReleased || !res.Stopped {
		t.Fatalf("terminate: %+v, %v; want the gate ended loudly and the slot handed back in the same invocation", res, err)
	}
	recs := c.records()
	alert := first(recs, ids[1], "ALERT: unsafe termination forced")
	if alert < 0 || !strings.Contains(recs[alert].Line, "before the invocation's deadline") {
		t.Errorf("no ALERT saying the gate ended before the invocation's deadline")
	}
	gateEnded := recs[alert].At.Sub(began)
	if gateEnded > limit-term.GateReserve+time.Second || gateEnded < limit-term.GateReserve-time.Second {
		t.Errorf("the gate ended %s into the invocation; want about %s (%s before its %s deadline)", gateEnded, limit-term.GateReserve, term.GateReserve, limit)
	}
	if got := c.completionsOf(ids[1], "slotkeeper-terminate"); !slices.Equal(got, []string{"CONTINUE"}) {
		t.Errorf("completions %v, want one CONTINUE", got)
	}
	t.Logf("invocation of %s, bound 30m: the gate ended %s in, the removal completed after %s",
		limit, gateEnded.Round(10*time.Millisecond), took.Round(10*time.Millisecond))
}

// rawLease reads slot s's lease item as stored, its scalar attributes as text.
func (c *cluster) rawLease(s int) map[string]string {
	c.t.Helper()
	out, err := dynamodb.NewFromConfig(c.h.DirectConfig()).GetItem(context.Background(), &dynamodb.GetItemInput{
		TableName: aws.String(c.cfg.Table), ConsistentRead: aws.Bool(true),
		Key: map[string]ddbtypes.AttributeValue{
			"cluster": &ddbtypes.AttributeValueMemberS{Value: c.cfg.Cluster},
			"slot":    &ddbtypes.AttributeValueMemberN{Value: fmt.Sprint(s)},
		},
	})
	if err != nil {
		c.t.Fatal(err)
	}
	m := map[string]string{}
	for k, v := range out.Item {
		switch v := v.(type) {
		case *ddbtypes.AttributeValueMemberS:
			m[k] = v.Value
		case *ddbtypes.AttributeValueMemberN:
			m[k] = v.Value
		}
	}
	return m
}

// A redelivery whose slot is already draining checks removal safety again, counting
// only what its broker still serves: the earlier delivery passed the gate and died
// before its stop took effect, and meanwhile another broker left the ISRs. Stopping
// this broker now would take orders/0 below min ISR, so the redelivery waits and is
// forced only at the bound, with the alert (found by the campaign, seed 5). A broker
// that is no longer in any ISR (the earlier stop took effect) goes on at once, even
// with a partition under min ISR.
func TestDrainingRedeliveryRechecksSafety(t *testing.T) {
	h := harness.Start(t)
	for _, tc := range []struct {
		name   string
		isr    []int32 // orders/0's ISR when the redelivery runs
		forced bool
	}{
		{"the broker still in an ISR at min: held, forced at the bound with the alert", []int32{1, 2}, true},
		{"the broker out of every ISR: goes on at once", []int32{2}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKafka(t, 3)
			c := newCluster(t, h, 3, nil)
			ids := []string{c.run(0), c.run(1), c.run(2)}
			c.launchAll(ids...)
			h.ResetCounts()
			term := c.terminate(k.client(t))
			term.SafetyMaxWait = 2 * time.Second
			payload := c.terminateEvent(ids[1])

			// UpdateItem #1 records the removal's start, #2 takes the token, #3 drains:
			// the invocation dies right after the drain took effect, before its stop.
			h.Inject(harness.Fault{Action: "UpdateItem", Kind: harness.Crash, Skip: 2, Times: 1})
			if _, err := runTerminate(t, term, payload, "died-after-drain"); err == nil {
				t.Fatal("the delivery that crashed after the drain succeeded")
			}
			h.ClearFaults()
			if l := c.lease(1); l.State != lease.Draining {
				t.Fatalf("lease %s after the crash, want draining", l.State)
			}
			if n := h.Calls("SendCommand"); n != 0 {
				t.Fatalf("%d stop commands before the redelivery, want none", n)
			}
			k.SetISR("orders", 0, tc.isr...)
			from := len(c.logs.String())
			res, err := runTerminate(t, term, payload, "redelivery")
			if err != nil || res.Outcome != terminate.OutcomeReleased || !res.Stopped {
				t.Fatalf("redelivery: %+v, %v; want the slot handed back after a stop", res, err)
			}
			alerted := strings.Contains(c.logs.String()[from:], "ALERT: unsafe termination forced")
			if res.Forced != tc.forced || alerted != tc.forced || res.SafetyChecks < 1 {
				t.Errorf("redelivery forced %v, alerted %v after %d safety checks; want forced and alerted %v after at least one check",
					res.Forced, alerted, res.SafetyChecks, tc.forced)
			}
			t.Logf("orders/0 ISR %v: the redelivery made %d safety checks, forced %v", tc.isr, res.SafetyChecks, res.Forced)
		})
	}
}

// leavingBrokers starts a cluster of three brokers, launched and bound, whose
// instances are all Terminating:Wait in the group (each may be removed), with cp
// pointing at it for stopsBrokers.
func leavingBrokers(t *testing.T, h *harness.Harness, cp *atomic.Pointer[cluster]) (*cluster, []string) {
	t.Helper()
	c := newCluster(t, h, 3, nil)
	cp.Store(c)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	c.inGroup("Terminating:Wait", "Healthy", ids...)
	return c, ids
}

// A removal the token was taken from by force is not over: when the removal that took
// it ends, the token goes back to it, and a third removal waits for it instead of
// finding the token free and judging its safety while that broker may still leave
// (seed 290 of the campaign: a health replacement took the token from a scale-in's
// removal at its bound and gave it back free; an evict took it, judged itself safe
// with the scale-in's broker still in the ISRs, and that broker then stopped).
func TestTokenTakenByForceGoesBackToTheRemovalItWasTakenFrom(t *testing.T) {
	h := harness.Start(t)
	k := newKafka(t, 3)
	var cp atomic.Pointer[cluster]
	stopsBrokers(h, &cp, k)
	c, ids := leavingBrokers(t, h, &cp)

	// A: the removal of slot 0 holds the token, alive, and is not over (its instance
	// runs, its broker was not seen stopped).
	holdToken(t, c, ids[0])
	term := c.terminate(k.client(t))
	term.SafetyMaxWait = 2 * time.Second

	// B takes it from A at its bound, loudly, and ends.
	rb, err := runTerminate(t, term, c.terminateEvent(ids[1]), "second")
	if err != nil || !rb.Forced || !rb.Stopped || rb.Outcome != terminate.OutcomeReleased {
		t.Fatalf("B: %+v, %v; want a release forced at its bound (the token held by A)", rb, err)
	}
	tok, err := c.store.GetRemoval(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	a := lease.Remover{Slot: 0, Instance: ids[0], LeaseVersion: c.lease(0).Version}
	if !tok.HeldFor(a) || tok.Invocation != "" || len(tok.Displaced) != 0 {
		t.Fatalf("token after B ended: %+v; want it back with A's removal (held for slot 0, %s, no invocation), not free", tok, ids[0])
	}
	if last := tok.History[len(tok.History)-1]; last.Event != "given back" || !strings.Contains(last.Reason, "handed back to the removal of slot 0") {
		t.Errorf("the token's last history entry %+v, want B's give back naming A's removal", last)
	}

	// C must wait for A's removal, not find the token free. A ends (its instance
	// terminates) a second into C's wait: C takes the token over then, unforced.
	go func() {
		time.Sleep(time.Second)
		h.TerminateInstance(t, ids[0])
	}()
	term.SafetyMaxWait = 6 * time.Second
	if _, err := runTerminate(t, term, c.terminateEvent(ids[2]), "third"); err != nil {
		t.Fatal(err)
	}
	recs := c.records()
	wait := first(recs, ids[2], "waiting for the removal token")
	held := first(recs, ids[2], "holding the removal token")
	if wait < 0 || !strings.Contains(recs[wait].Reason, "slot 0") {
		t.Errorf("C did not wait for A's removal (%d): want log 'waiting for the removal token' naming slot 0", wait)
	}
	if held < 0 || !strings.Contains(recs[held].Reason, "taken over: "+ids[0]+" is terminated") {
		t.Errorf("C took the token with reason %q, want it taken over once %s is terminated", recs[max(held, 0)].Reason, ids[0])
	}
	t.Logf("after B: token held for %s (slot %d), displaced %v; C waited (%s), then %s",
		tok.Holder, tok.HolderSlot, tok.Displaced, shorten(recs[max(wait, 0)].Reason, 80), shorten(recs[max(held, 0)].Reason, 80))
}

// A displaced removal that ends before the removal holding the token does: its own
// end takes it off the token (its broker was seen stopped), or, when nothing of it is
// left to do so, the token's give back hands past it. Either way the token ends free
// once every removal is over, instead of staying held for a removal nobody will end
// (which would keep `slotctl roll` waiting).
func TestDisplacedRemovalThatEndsFirstDoesNotKeepTheToken(t *testing.T) {
	ctx := context.Background()
	h := harness.Start(t)
	k := newKafka(t, 3)
	var cp atomic.Pointer[cluster]
	stopsBrokers(h, &cp, k)

	// setup: A (slot 0) held the token, B (slot 1) took it by force and its invocation
	// died (its stamp expired), so B's redelivery will carry B's removal on.
	setup := func(t *testing.T) (*cluster, []string, lease.Remover) {
		c, ids := leavingBrokers(t, h, &cp)
		holdToken(t, c, ids[0])
		lb := c.lease(1)
		tok, err := c.store.GetRemoval(ctx)
		if err == nil {
			_, err = c.store.TakeOverRemoval(ctx, tok, lease.Remover{Slot: 1, Instance: ids[1], LeaseVersion: lb.Version,
				Invocation: "terminate/dead", Until: time.Now().Add(-time.Second)}, "test: forced at the bound")
		}
		if err != nil {
			t.Fatal(err)
		}
		return c, ids, lease.Remover{Slot: 0, Instance: ids[0], LeaseVersion: c.lease(0).Version}
	}
	endB := func(t *testing.T, c *cluster, ids []string) lease.Removal {
		term := c.terminate(k.client(t))
		term.SafetyMaxWait = 2 * time.Second
		if rb, err := runTerminate(t, term, c.terminateEvent(ids[1]), "b-redelivery"); err != nil || rb.Outcome != terminate.OutcomeReleased {
			t.Fatalf("B: %+v %v", rb, err)
		}
		tok, err := c.store.GetRemoval(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	t.Run("its own end takes it off the token", func(t *testing.T) {
		c, ids, a := setup(t)
		// A passed its gate before it was displaced (its slot is draining); its
		// redelivery goes on, stops its broker, releases the slot, and ends.
		if _, err := c.store.Drain(ctx, c.lease(0), "test: A passed its gate"); err != nil {
			t.Fatal(err)
		}
		term := c.terminate(k.client(t))
		term.SafetyMaxWait = 2 * time.Second
		if ra, err := runTerminate(t, term, c.terminateEvent(ids[0]), "a-redelivery"); err != nil || !ra.Stopped || ra.Outcome != terminate.OutcomeReleased {
			t.Fatalf("A: %+v %v", ra, err)
		}
		tok, err := c.store.GetRemoval(ctx)
		if err != nil || tok.DisplacedBy(a) || !tok.Held() || tok.HolderSlot != 1 {
			t.Fatalf("token after A ended: %+v %v; want still B's, with A off the displaced list", tok, err)
		}
		if tok := endB(t, c, ids); tok.Held() || len(tok.Displaced) != 0 {
			t.Fatalf("token after B ended: %+v; want free", tok)
		}
	})

	t.Run("the last writer settles it", func(t *testing.T) {
		c, ids, _ := setup(t)
		// B's removal is over (its broker seen stopped, its slot released) but nothing
		// of it is left to give the token back (its hand-on lost a race with A's write).
		tok, err := c.store.GetRemoval(ctx)
		if err == nil {
			_, err = c.store.MarkRemovalStopped(ctx, tok, "test: broker 1 stopped")
		}
		var dl lease.Lease
		if err == nil {
			dl, err = c.store.Drain(ctx, c.lease(1), "test")
		}
		if err == nil {
			_, err = c.store.Release(ctx, dl, "test: B terminated")
		}
		if err == nil {
			_, err = c.store.Drain(ctx, c.lease(0), "test: A passed its gate")
		}
		if err != nil {
			t.Fatal(err)
		}
		// A's instance stopped meanwhile (nothing runs there: its removal needs no gate,
		// and is over). A's redelivery ends A's removal: it leaves the displaced list,
		// and, as the last writer, hands the token on past B's removal, which is over.
		h.SetInstanceState(ids[0], "stopped")
		term := c.terminate(k.client(t))
		term.SafetyMaxWait = 2 * time.Second
		if ra, err := runTerminate(t, term, c.terminateEvent(ids[0]), "a-redelivery"); err != nil || ra.Outcome != terminate.OutcomeReleased {
			t.Fatalf("A: %+v %v", ra, err)
		}
		if tok, err := c.store.GetRemoval(ctx); err != nil || tok.Held() || len(tok.Displaced) != 0 {
			t.Fatalf("token after A ended: %+v %v; want free (B's removal is over)", tok, err)
		}
	})

	t.Run("the give back hands past it", func(t *testing.T) {
		c, ids, a := setup(t)
		// A ends with nothing left to take it off the token: its stop was recorded on
		// its entry, its slot released (as its invocation does before it gives back).
		tok, err := c.store.GetRemoval(ctx)
		if err == nil {
			_, err = c.store.MarkDisplacedStopped(ctx, tok, a, "test: broker 0 stopped")
		}
		var dl lease.Lease
		if err == nil {
			dl, err = c.store.Drain(ctx, c.lease(0), "test")
		}
		if err == nil {
			_, err = c.store.Release(ctx, dl, "test: A terminated")
		}
		if err != nil {
			t.Fatal(err)
		}
		tok = endB(t, c, ids)
		if tok.Held() || len(tok.Displaced) != 0 {
			t.Fatalf("token after B ended: held=%v for %s (slot %d), displaced %v; want free: A's removal is over", tok.Held(), tok.Holder, tok.HolderSlot, tok.Displaced)
		}
		recs := c.records()
		if i := first(recs, ids[1], "removal token given back"); i < 0 || !strings.Contains(c.logs.String(), "the removal holding it is over") {
			t.Errorf("no log of the token handed back to A and on past it (%d)", i)
		}
	})
}
