package test

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/hostcmd"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/terminate"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// Must show 1 (issue 3): a planned termination of a healthy broker hands the slot back,
// and the next launch in the AZ gets the same slot, ENI and volume.
func TestPlannedTerminationHandsTheSlotBack(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, map[string]string{"STOP_COMMAND": "systemctl stop kafka.service"})
	k := newKafka(t, 3)
	ids := []string{c.run(0), c.run(1), c.run(2)}
	c.launchAll(ids...)
	enis, vols := c.enis(1), c.volumes(1)
	h.ResetCounts()

	if err := invokeWith(c.terminate(k.client(t)), c.terminateEvent(ids[1])); err != nil {
		t.Fatal(err)
	}
	cmds := c.ssmCommands(ids[1])
	// The command names the slot's volume as EC2 has it attached: its id and device.
	want := strings.Join(hostcmd.SSMCommands(hostcmd.StopAndUnmount(hostcmd.Stop{
		Unit: "kafka", Command: "systemctl stop kafka.service", Mount: "/var/lib/kafka", Volume: vols[0].ID, Device: "/dev/sdf",
	})), "\n")
	if len(cmds) != 1 || cmds[0][1] != want || !strings.Contains(cmds[0][0], "broker 1") {
		t.Errorf("SSM commands to %s: %q, want one stop-and-unmount of broker 1 and volume %s with the configured stop command", ids[1], cmds, vols[0].ID)
	}
	for _, other := range []string{ids[0], ids[2]} {
		if cmds := c.ssmCommands(other); len(cmds) != 0 {
			t.Errorf("SSM commands sent to %s, which is not leaving: %q", other, cmds)
		}
	}
	if e, v := c.enis(1), c.volumes(1); e[0].AttachedTo != "" || v[0].AttachedTo != "" || v[0].State != "available" {
		t.Errorf("after termination: ENI %+v, volume %+v, want both detached and available", e, v)
	}
	l := c.lease(1)
	if l.State != lease.Free || l.LastHolder != ids[1] || l.Version != 2 {
		t.Errorf("lease %+v, want free at version 2 with last holder %s", l, ids[1])
	}
	if got := c.completionsOf(ids[1], "slotkeeper-terminate"); !slices.Equal(got, []string{"CONTINUE"}) {
		t.Errorf("terminate completions %v, want one CONTINUE", got)
	}
	if n := h.Calls("DetachVolume") + h.Calls("DetachNetworkInterface"); n != 2 {
		t.Errorf("%d detach calls, want 2", n)
	}

	// The instance goes; its replacement becomes broker 1 with the same resources.
	h.TerminateInstance(t, ids[1])
	h.ResetCounts()
	replacement := c.run(1)
	c.launchAll(replacement)
	if e, v := c.enis(1), c.volumes(1); e[0].ID != enis[0].ID || e[0].IP != enis[0].IP || v[0].ID != vols[0].ID ||
		e[0].AttachedTo != replacement || v[0].AttachedTo != replacement {
		t.Errorf("replacement got ENI %+v and volume %+v, want %s/%s and %s attached to it", e, v, enis[0].ID, enis[0].IP, vols[0].ID)
	}
	if n := h.Calls("CreateVolume") + h.Calls("CreateNetworkInterface") + h.Calls("DetachVolume") + h.Calls("DetachNetworkInterface"); n != 0 {
		t.Errorf("the replacement needed %d create/detach calls, want none (everything was handed back)", n)
	}
	if l := c.lease(1); l.State != lease.Bound || l.Holder != replacement || l.Version != 3 {
		t.Errorf("lease %+v", l)
	}
}

// An instance that holds no slot (abandoned at launch, or never ours) is let go at once.
func TestTerminateWithoutSlotContinues(t *testing.T) {
	h := harness.Start(t)
	c := newCluster(t, h, 3, nil)
	id := c.run(0)
	h.ResetCounts()
	if err := invokeWith(c.terminate(nil), c.terminateEvent(id)); err != nil {
		t.Fatal(err)
	}
	if got := mutating(h); !slices.Equal(got, []string{"CompleteLifecycleAction"}) {
		t.Errorf("mutating calls %v, want only the completion", got)
	}
	if got := c.completionsOf(id, "slotkeeper-terminate"); !slices.Equal(got, []string{"CONTINUE"}) {
		t.Errorf("completions %v", got)
	}
}

func TestPlannedClassification(t *testing.T) {
	tests := []struct {
		state, health, cause string
		want                 bool
	}{
		{"running", "Healthy", "At 2026-11-21T20:40:17Z a user request explicitly set group desired capacity changing the desired capacity from 3 to 2.", true},
		{"running", "Healthy", "At 2026-11-21T20:40:17Z an instance was taken out of service as part of an instance refresh.", true},
		{"running", "Healthy", "At 2026-11-21T20:40:17Z instances were launched to balance instances in zones us-east-1a us-east-1b.", true},
		{"running", "Healthy", "", true},
		{"running", "", "", true}, // not found in the group (moto, or already detached): a running instance
		{"running", "Unhealthy", "", false},
		{"running", "Healthy", "At 2026-11-21T20:40:17Z an instance was taken out of service in response to an ELB system health check failure.", false},
		{"running", "Healthy", "At 2026-11-21T20:40:17Z an instance was taken out of service in response to an EC2 instance status check failure.", true},
		{"running", "Healthy", "At 2026-11-21T20:40:17Z an instance was taken out of service in response to an EC2 health check indicating it has been terminated or stopped.", false},
		{"shutting-down", "Healthy", "", false},
		{"stopped", "Healthy", "", false},
		{"", "", "", false},
	}
	for _, tt := range tests {
		got, why := terminate.Planned(tt.state, tt.health, tt.cause)
		if got != tt.want || why == "" {
			t.Errorf("Planned(%q, %q, %q) = %v (%q), want %v with a reason", tt.state, tt.health, tt.cause, got, why, tt.want)
		}
	}
}

// Must show 5 (issue 3), extended (issue 10, Must show 8): a crash after each mutating
// call of the terminate path (the removal token's writes included), then redelivery,
// ends in the fault-free state, the token given back; so does each conditional write
// whose response is lost (the SDK retries it and meets its own write). Foreign and
// malformed events change nothing.
func TestTerminateConvergesAfterCrashes(t *testing.T) {
	h := harness.Start(t)
	k := newKafka(t, 3)
	setup := func(t *testing.T) (*cluster, []byte, map[string]string) {
		c := newCluster(t, h, 3, nil)
		ids := []string{c.run(0), c.run(1), c.run(2)}
		c.launchAll(ids...)
		return c, c.terminateEvent(ids[1]), map[string]string{ids[0]: "b0", ids[1]: "leaving", ids[2]: "b2"}
	}
	c, payload, roles := setup(t)
	h.ResetCounts()
	if err := invokeWith(c.terminate(k.client(t)), payload); err != nil {
		t.Fatal(err)
	}
	calls := mutating(h)
	want := c.snapshotOf(roles, "slotkeeper-terminate")
	t.Logf("fault-free terminate mutating calls: %v", calls)
	if want.Slots[1].State != "free" || want.Token != "free" || !slices.Contains(calls, "SendCommand") {
		t.Fatalf("fault-free run did not stop the broker, free slot 1 and give the token back: %+v", want)
	}
	for i, action := range calls {
		skip := 0
		for _, a := range calls[:i] {
			if a == action {
				skip++
			}
		}
		t.Run("crash after "+action+" #"+string(rune('1'+skip)), func(t *testing.T) {
			c, payload, roles := setup(t)
			term := c.terminate(k.client(t))
			h.Inject(harness.Fault{Action: action, Kind: harness.Crash, Skip: skip, Times: 1})
			defer h.ClearFaults()
			err := invokeWith(term, payload)
			t.Logf("first delivery: %v", err)
			for d := 0; d < 2; d++ {
				if err := invokeWith(term, payload); err != nil {
					t.Fatalf("redelivery %d: %v", d+1, err)
				}
			}
			if got := c.snapshotOf(roles, "slotkeeper-terminate"); !reflect.DeepEqual(got, want) {
				t.Errorf("end state differs\n got: %+v\nwant: %+v", got, want)
			}
		})
	}
	for i, action := range calls {
		if action != "UpdateItem" {
			continue
		}
		skip := 0
		for _, a := range calls[:i] {
			if a == action {
				skip++
			}
		}
		t.Run(fmt.Sprintf("response of UpdateItem #%d lost", skip+1), func(t *testing.T) {
			c, payload, roles := setup(t)
			term := c.terminate(k.client(t))
			h.Inject(harness.Fault{Action: action, Kind: harness.LostResponse, Skip: skip, Times: 1})
			defer h.ClearFaults()
			if err := invokeWith(term, payload); err != nil {
				t.Fatalf("a lost response made the delivery fail: %v", err)
			}
			if got := c.snapshotOf(roles, "slotkeeper-terminate"); !reflect.DeepEqual(got, want) {
				t.Errorf("end state differs\n got: %+v\nwant: %+v", got, want)
			}
		})
	}
	t.Run("foreign and malformed events", func(t *testing.T) {
		c, payload, _ := setup(t)
		term := c.terminate(k.client(t))
		for name, p := range map[string][]byte{
			"launch event":  c.launchEvent("i-0123456789abcdef0"),
			"foreign ASG":   []byte(strings.Replace(string(payload), c.cfg.ASGName, "web", 1)),
			"truncated":     payload[:len(payload)/2],
			"schedule":      c.scheduleEvent(),
			"state change":  c.terminatedEvent("i-0123456789abcdef0"),
			"not an object": []byte(`"terminate"`),
		} {
			h.ResetCounts()
			_ = invokeWith(term, p)
			if got := h.MutatingCalls(); len(got) != 0 {
				t.Errorf("%s: mutating calls %v", name, got)
			}
		}
	})
}

// completionsOf returns the results recorded for instance's hook.
func (c *cluster) completionsOf(instance, hook string) []string {
	var res []string
	for _, cl := range c.h.Completions() {
		if cl.InstanceID == instance && cl.Hook == hook {
			res = append(res, cl.Result)
		}
	}
	return res
}

// removalSnapshot is a cluster's end state after terminations: the slots, the
// instances' tags and completions of one hook, and the removal token.
type removalSnapshot struct {
	snapshot
	// Token is "free" or "held for <role> (slot N)".
	Token string
}

// snapshotOf is snapshot with the completions of one hook only, and the removal token.
func (c *cluster) snapshotOf(roles map[string]string, hook string) removalSnapshot {
	s := c.snapshot(roles)
	for id, r := range roles {
		s.Completions[r] = c.completionsOf(id, hook)
	}
	tok, err := c.store.GetRemoval(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	token := string(tok.State)
	if tok.Held() {
		token = fmt.Sprintf("held for %s (slot %d)", roles[tok.Holder], tok.HolderSlot)
	}
	return removalSnapshot{snapshot: s, Token: token}
}

// Must show 2 (issue 3): while removal is unsafe, terminate holds the instance in
// Terminating:Wait with heartbeats and proceeds once the ISR recovers; a topic whose
// replication factor is at or below min ISR does not block; with Kafka down it
// proceeds after the bound, loudly.
func TestTerminateWaitsForRemovalSafety(t *testing.T) {
	h := harness.Start(t)
	setup := func(t *testing.T) (*cluster, *kafkaCluster, []string) {
		c := newCluster(t, h, 3, nil)
		ids := []string{c.run(0), c.run(1), c.run(2)}
		c.launchAll(ids...)
		return c, newKafka(t, 3), ids
	}
	heartbeats := func(id string) int {
		n := 0
		for _, hb := range h.Heartbeats() {
			if hb.InstanceID == id && hb.Hook == "slotkeeper-terminate" {
				n++
			}
		}
		return n
	}

	t.Run("unsafe until the ISR recovers", func(t *testing.T) {
		c, k, ids := setup(t)
		// orders/0 is at min ISR (2) with broker 1 in its ISR: another replica is out.
		var other int32 = -1
		for _, r := range k.Replicas("orders", 0) {
			if r != 1 {
				other = r
				break
			}
		}
		k.SetISR("orders", 0, 1, other)
		term := c.terminate(k.client(t))
		term.SafetyMaxWait = 30 * time.Second
		recovered := make(chan struct{})
		go func() {
			// Recover once terminate has found removal unsafe and has been seen waiting
			// (two more heartbeats after that).
			for !strings.Contains(c.logs.String(), "removal not safe yet") {
				time.Sleep(10 * time.Millisecond)
			}
			for seen := heartbeats(ids[1]); heartbeats(ids[1]) < seen+2; {
				time.Sleep(10 * time.Millisecond)
			}
			k.Restore("orders", 0)
			close(recovered)
		}()
		res, err := term.Run(context.Background(), c.terminateEvent(ids[1]))
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-recovered:
		default:
			t.Fatal("terminate proceeded before the ISR recovered")
		}
		if res.Forced || !res.Planned || res.Outcome != terminate.OutcomeReleased || res.SafetyChecks < 2 {
			t.Errorf("result %+v, want a planned, unforced release after several checks", res)
		}
		if n := heartbeats(ids[1]); n < 2 {
			t.Errorf("%d heartbeats while waiting, want at least 2", n)
		}
		if !strings.Contains(c.logs.String(), "orders/0") {
			t.Errorf("the log does not name the blocking partition")
		}
		if got := c.completionsOf(ids[1], "slotkeeper-terminate"); !slices.Equal(got, []string{"CONTINUE"}) {
			t.Errorf("completions %v", got)
		}
		t.Logf("waited %d checks with %d heartbeats until orders/0 recovered", res.SafetyChecks, heartbeats(ids[1]))
	})

	t.Run("a topic with RF at or below min ISR does not block", func(t *testing.T) {
		c, k, ids := setup(t)
		k.SetISR("scratch", 0, 1) // RF 2, min ISR 2: can never be safe, so it is ignored
		term := c.terminate(k.client(t))
		term.SafetyMaxWait = 30 * time.Second
		res, err := term.Run(context.Background(), c.terminateEvent(ids[1]))
		if err != nil {
			t.Fatal(err)
		}
		if res.Forced || res.Outcome != terminate.OutcomeReleased || res.SafetyChecks != 1 {
			t.Errorf("result %+v, want a release after one safety check (the RF 2 topic is ignored)", res)
		}
	})

	t.Run("kafka down: proceeds after the bound, loudly", func(t *testing.T) {
		c, k, ids := setup(t)
		cl := k.client(t)
		k.Close()
		term := c.terminate(cl)
		term.SafetyMaxWait = 500 * time.Millisecond
		res, err := term.Run(context.Background(), c.terminateEvent(ids[1]))
		if err != nil {
			t.Fatal(err)
		}
		if !res.Forced || res.Outcome != terminate.OutcomeReleased {
			t.Errorf("result %+v, want a forced release", res)
		}
		if !strings.Contains(c.logs.String(), "ALERT: unsafe termination forced") || !strings.Contains(c.metrics.String(), "UnsafeTerminationsForced") {
			t.Errorf("the forced termination was not signalled loudly (log and metric)")
		}
		if l := c.lease(1); l.State != lease.Free {
			t.Errorf("lease %+v", l)
		}
	})
}
