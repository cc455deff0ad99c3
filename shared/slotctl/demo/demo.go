// Package demo shows slotkeeper's whole job on one machine, with no AWS account: the
// real function binaries, built for this machine, run as Lambda runs them (package
// lambdart: the Lambda Runtime API, configuration by environment variables only)
// against moto, the AWS emulator the tests use, and an in-process Kafka of three
// brokers (kfake, with scripted in-sync replicas). It tells one story:
//
//  1. three brokers launch together and get slots 0, 1 and 2, one per AZ;
//  2. broker 1's instance dies without warning; the reconciler frees its slot;
//  3. the replacement becomes broker 1, with the same IP and the same volume;
//  4. a planned scale-in is held back while a partition is at min ISR, and goes
//     ahead once it is safe (controlled shutdown, slot handed back);
//  5. the group scales back out: the new instance becomes broker 0 again;
//  6. broker 2's disk passes 85 %: its volume grows;
//  7. slotctl roll replaces every broker, one at a time, controllers last and the
//     quorum leader very last, waiting for Kafka in between (the group around moto is
//     played by Group);
//  8. the scheduled reconcile finds nothing to repair; DNS follows the slots.
//
// The events are the ones AWS would deliver (lifecycle actions, instance state
// changes, the schedule, the alarm action), built by the demo in their real shapes,
// since moto emits none. Run returns a Report: the timeline of events and invocations
// (with each invocation's AWS calls), the final slot table and the story's claims,
// checked against the final state.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/slotkeeper/slotkeeper/shared/hostcmd"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/test/emulator"
	"github.com/slotkeeper/slotkeeper/test/fakekafka"
	"github.com/slotkeeper/slotkeeper/test/realkafka"
)

// Options configure a demo run.
type Options struct {
	// Root is the slotkeeper checkout whose functions are built; "" finds it from the
	// working directory.
	Root string
	// LogDir receives the functions' logs (one file per function) and the setup log;
	// "" creates a temporary directory, which is kept for reading afterwards.
	LogDir string
	// Out is where the story is told.
	Out *slotctl.Output
	// Kafka is the brokers' Kafka: KafkaFake (the default, also for "") or KafkaReal
	// (Apache Kafka, from the runtime make kafka-runtime fetches; the SSM stop command
	// becomes SIGTERM to that broker's process, a crash SIGKILL).
	Kafka string
}

// Event is one row of the timeline: something that happened in the world (Function
// empty), or an invocation of a function.
type Event struct {
	AtMS     int64  `json:"at_ms"` // since the demo started
	Event    string `json:"event"`
	Function string `json:"function,omitempty"`
	Outcome  string `json:"outcome,omitempty"`
	// Calls and Writes count the invocation's AWS calls (SDK retries included), and
	// the ones that changed something; CallsByAction names them.
	Calls         int            `json:"aws_calls,omitempty"`
	Writes        int            `json:"aws_writes,omitempty"`
	CallsByAction map[string]int `json:"calls_by_action,omitempty"`
	DurationMS    int64          `json:"duration_ms,omitempty"`
	ColdStart     bool           `json:"cold_start,omitempty"`
	RequestID     string         `json:"request_id,omitempty"`
	// Response is what the function returned.
	Response json.RawMessage `json:"response,omitempty"`
}

// Check is one claim of the story, checked against the final state.
type Check struct {
	Claim  string `json:"claim"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Report is what a demo run did and ended with.
type Report struct {
	DurationMS int64          `json:"duration_ms"`
	Platform   string         `json:"platform"`
	LogDir     string         `json:"log_dir"`
	Timeline   []Event        `json:"timeline"`
	Final      slotctl.Survey `json:"final"`
	// Roll is what slotctl roll did in step 7.
	Roll   *slotctl.RollReport `json:"roll,omitempty"`
	Checks []Check             `json:"checks"`
	// Passed is true when every check holds.
	Passed bool `json:"passed"`
}

// demo is one run of the story.
type demo struct {
	opt   Options
	r     *teardown
	log   io.Writer // the setup log
	p     *progress
	start time.Time
	st    *Stage
	k     kafkaWorld
	f     *fleet
	store *lease.Store // reads leases directly at moto (uncounted)

	mu       sync.Mutex
	timeline []Event
	nodes    map[string]int // instance -> node id of the slot it holds
	holds    chan string    // reasons the terminate function logged for holding on

	// What the story noted on the way, for the checks.
	first        map[int]lease.Lease // slot -> lease after the first launches
	crashed      string              // broker 1's first instance
	released     []int               // slots the crash's reconcile released
	replacement  string
	leaver       string // the scale-in's instance
	leaverResult map[string]any
	heldFor      time.Duration
	holdReasons  []string
	returner     string // the scale-out's instance
	grown        map[string]any
	beforeRoll   slotctl.Survey // the slots after step 6, for the claims of steps 1-6
	group        *Group
	roll         slotctl.RollReport
	rollBegan    time.Time
	rollHolders  []string // the holders the roll replaced, by slot

	// During the roll, the KRaft quorum is scripted (quorum); a stopped broker is
	// behind until it has caught up again.
	rolling bool
	quorum  fakekafka.Quorum

	// bg counts the story's delayed steps (a started broker catching up a second
	// later): Run waits for them, so none writes to the output, or touches the
	// stage, after the story ended.
	bg sync.WaitGroup
}

// Run tells the story (see the package documentation) and reports it. The error is
// for a demo that could not run: the emulator missing (ErrNoEmulator), a build that
// failed, a function that failed. A story that ran but ended in a wrong state is
// reported with Passed false and a nil error.
func Run(ctx context.Context, opt Options) (Report, error) {
	d := &demo{opt: opt, start: time.Now(), nodes: map[string]int{}, holds: make(chan string, 64), first: map[int]lease.Lease{}}
	rep := Report{Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if opt.Root == "" {
		wd, err := os.Getwd()
		if err != nil {
			return rep, fmt.Errorf("finding the working directory: %w", err)
		}
		if opt.Root, err = findRoot(wd); err != nil {
			return rep, err
		}
		d.opt.Root = opt.Root
	}
	if opt.LogDir == "" {
		dir, err := os.MkdirTemp("", "slotkeeper-demo-")
		if err != nil {
			return rep, fmt.Errorf("creating the log directory: %w", err)
		}
		d.opt.LogDir = dir
	} else if err := os.MkdirAll(opt.LogDir, 0o755); err != nil {
		return rep, fmt.Errorf("creating the log directory: %w", err)
	}
	rep.LogDir = d.opt.LogDir
	setupLog, err := os.Create(filepath.Join(d.opt.LogDir, "setup.log"))
	if err != nil {
		return rep, fmt.Errorf("creating the setup log: %w", err)
	}
	defer setupLog.Close()
	d.r, d.log = &teardown{}, setupLog
	d.p = newProgress(opt.Out, d.start)

	ctx, cancel := context.WithCancel(ctx) // stops the build, should the story end first
	defer cancel()
	err = d.story(ctx, &rep)
	d.bg.Wait()
	if cerr := d.r.finish(); cerr != nil && err == nil {
		err = fmt.Errorf("after the story: %w", cerr)
	}
	d.mu.Lock()
	rep.Timeline = slices.Clone(d.timeline)
	d.mu.Unlock()
	// Invocations are recorded when they end; the timeline is by start.
	slices.SortStableFunc(rep.Timeline, func(a, b Event) int { return int(a.AtMS - b.AtMS) })
	rep.DurationMS = time.Since(d.start).Milliseconds()
	return rep, err
}

// story is the demo proper.
func (d *demo) story(ctx context.Context, rep *Report) error {
	if err := d.setUp(ctx); err != nil {
		return err
	}
	steps := []struct {
		title string
		run   func(context.Context) error
	}{
		{"1. Three brokers launch together", d.launchThree},
		{"2. Broker 1's instance dies without warning", d.crash},
		{"3. The group replaces it: the new instance becomes broker 1", d.replace},
		{"4. A planned scale-in waits until Kafka can lose the broker", d.scaleIn},
		{"5. The group scales back out: the new instance becomes broker 0", d.scaleOut},
		{"6. Broker 2's disk passes 85 %", d.grow},
		{"7. slotctl roll: every broker replaced, one at a time", d.rollAll},
		{"8. The scheduled reconcile, and DNS", d.reconcile},
	}
	for _, s := range steps {
		d.p.Step(s.title)
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("%s: %w (function logs: %s)", s.title, err, d.opt.LogDir)
		}
	}
	var err error
	if rep.Final, err = slotctl.Inspect(ctx, d.st.Clients(), d.st.Config, slotctl.SurveyOptions{KnownSubnets: true}); err != nil {
		return fmt.Errorf("reading the final state: %w", err)
	}
	if dnsSt := rep.Final.DNS; dnsSt != nil && len(dnsSt.Drift) == 0 {
		d.p.Note("DNS: the %d records under %s match the slots; bootstrap is %v", dnsSt.Records, dnsSt.Name, dnsSt.Bootstrap)
	} else if dnsSt != nil {
		d.p.Note("DNS: %d record(s) differ from the slots: %v", len(dnsSt.Drift), dnsSt.Drift)
	}
	rep.Roll = &d.roll
	rep.Checks = d.checks(rep.Final)
	rep.Passed = !slices.ContainsFunc(rep.Checks, func(c Check) bool { return !c.OK })
	return nil
}

// setUp starts moto, builds the world and Kafka, builds the functions and runs
// preflight against the result.
func (d *demo) setUp(ctx context.Context) error {
	d.p.Step("Setting the stage")
	built := make(chan error, 1)
	binDir := filepath.Join(d.opt.LogDir, "functions")
	go func() { built <- build(ctx, d.opt.Root, binDir) }()

	var h *emulator.Emulator
	if err := d.p.Wait("starting moto, the AWS emulator", func() error {
		var err error
		h, err = emulator.Start()
		if errors.Is(err, emulator.ErrNoMoto) && os.Getenv("CI") != "true" {
			// Under CI=true a missing emulator is a broken set-up, not a reason to skip.
			return fmt.Errorf("%w: %w", ErrNoEmulator, err)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(d.log, "moto at %s, the proxy at %s\n", h.MotoURL, h.URL)
		d.r.Cleanup(func() {
			if err := h.Close(); err != nil {
				d.r.Errorf("stopping the emulator: %v", err)
			}
			fmt.Fprintf(d.log, "moto's output (last 64 KiB):\n%s\n", h.MotoOutput())
		})
		d.r.Cleanup(func() {
			if calls := h.Forbidden(); len(calls) > 0 {
				d.r.Errorf("a function called %v: slotkeeper must never delete a broker's volume or ENI", calls)
			}
		})
		return nil
	}); err != nil {
		return err
	}
	var opt StageOptions
	switch d.opt.Kafka {
	case "", KafkaFake:
	case KafkaReal:
		if err := d.p.Wait("starting Apache Kafka "+realkafka.Version+": three KRaft nodes on loopback", func() error {
			c, err := realkafka.Start(ctx, realkafka.Options{Nodes: Slots})
			if err != nil {
				return err
			}
			d.r.Cleanup(c.Close)
			opt.RealKafka = c
			d.p.Note("Apache Kafka %s: nodes 0, 1, 2 at %s, started in %s (logs in %s)", realkafka.Version, c.Bootstrap(), c.Started.Round(time.Millisecond), c.Dir)
			return nil
		}); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown Kafka %q: want %s or %s", d.opt.Kafka, KafkaFake, KafkaReal)
	}
	if err := d.p.Wait("building the world: VPC, lease table, zone, group, Kafka", func() error {
		st, err := NewStageWith(ctx, h, "demo", opt)
		if err != nil {
			return fmt.Errorf("building the world: %w", err)
		}
		d.st = st
		d.r.Cleanup(st.Close)
		return nil
	}); err != nil {
		return err
	}
	if d.st.Real != nil {
		d.k = &realKafka{c: d.st.Real}
	} else {
		d.k = fakeKafka{d}
	}
	d.p.Note("a VPC with subnets in us-east-1a, b and c; lease table %s; private zone %s; group %s with a launch and a terminate hook; %s: brokers 0, 1, 2, topic %s (3 partitions, RF 3, min ISR 2)",
		d.st.Config.Table, d.st.Config.DNS.Name, d.st.Config.ASGName, d.k.name(), Topic)
	// A controlled shutdown (the stop command over SSM) stops the broker: it leaves the
	// cluster metadata and the ISRs. moto runs no command; the proxy tells the demo.
	h.Override(emulator.Override{Action: "SendCommand", Rewrite: func(req, resp []byte) []byte {
		d.stopCommand(req)
		return resp
	}})
	d.store = lease.NewStore(dynamodb.NewFromConfig(h.DirectConfig()), d.st.Config.Table, d.st.Config.Cluster)

	if err := d.p.Wait(fmt.Sprintf("building the five functions for %s/%s", runtime.GOOS, runtime.GOARCH),
		func() error { return <-built }); err != nil {
		return err
	}
	env := append(d.st.Env(),
		"AWS_ACCESS_KEY_ID=testing", "AWS_SECRET_ACCESS_KEY=testing", "AWS_XRAY_SDK_DISABLED=true",
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_EC2_METADATA_DISABLED=true")
	// The functions reach AWS through the group's endpoint, which shows the lifecycle
	// states of the instances the group terminates and launches (Group).
	if err := d.newGroup(); err != nil {
		return err
	}
	f, err := newFleet(binDir, d.opt.LogDir, d.group.URL, env, d.watch)
	if err != nil {
		return err
	}
	d.f = f
	d.r.Cleanup(func() {
		if err := f.close(); err != nil {
			d.r.Errorf("stopping the functions: %v", err)
		}
	})

	// Through the proxy, which answers DescribeInstanceRefreshes for moto.
	pc := slotctl.NewClients(d.st.H.AWSConfig())
	pc.KafkaConfig = d.st.Config.Kafka
	pre := slotctl.Preflight(ctx, pc, d.st.Config, slotctl.PreflightOptions{})
	pc.Close()
	var notOK []string
	for _, c := range pre.Checks {
		if c.Result != slotctl.CheckOK {
			notOK = append(notOK, c.Name+": "+c.Result+" ("+c.Detail+")")
		}
	}
	if len(notOK) > 0 {
		return fmt.Errorf("preflight of the demo's deployment: %s", strings.Join(notOK, "; "))
	}
	var names []string
	for _, c := range pre.Checks {
		names = append(names, c.Name)
	}
	d.p.Note("slotctl preflight: all %d checks pass (%s)", len(pre.Checks), strings.Join(names, ", "))
	// No instance runs yet, so no broker is registered.
	return d.k.offline(ctx)
}

// watch reads the functions' log lines: the terminate function's reasons for holding
// a termination back.
func (d *demo) watch(fn string, line []byte) {
	if fn != "terminate" || !strings.Contains(string(line), "removal not safe yet") {
		return
	}
	var rec struct {
		Reason string `json:"reason"`
	}
	_ = json.Unmarshal(line, &rec)
	select {
	case d.holds <- rec.Reason:
	default:
	}
}

// stopCommand sees every SSM SendCommand: the stop-and-unmount command (which runs the
// deployment's stop command) stops the broker of each instance it targets.
func (d *demo) stopCommand(req []byte) {
	var in struct {
		InstanceIds []string
		Parameters  map[string][]string
	}
	if json.Unmarshal(req, &in) != nil || !hostcmd.IsStopAndUnmount(in.Parameters["commands"]) {
		return
	}
	for _, id := range in.InstanceIds {
		d.mu.Lock()
		node, ok := d.nodes[id]
		d.mu.Unlock()
		if ok {
			how := ""
			if d.st.Real != nil {
				how = " (SIGTERM to its Kafka process)"
			}
			if err := d.k.stopped(int32(node)); err != nil {
				d.r.Errorf("stopping broker %d: %v", node, err)
			}
			d.world(fmt.Sprintf("SSM runs %q and unmounts %s on %s%s", d.st.Config.StopCommand, d.st.Config.Grow.DataMount, id, how),
				fmt.Sprintf("broker %d shuts down cleanly, leaves the cluster; its volume is unmounted", node))
		}
	}
}

// outOfSync takes broker out of the ISR of every partition of the topic.
func (d *demo) outOfSync(broker int32) {
	for p := range int32(3) {
		var isr []int32
		for _, r := range d.st.Kafka.Replicas(Topic, p) {
			if r != broker {
				isr = append(isr, r)
			}
		}
		d.st.Kafka.SetISR(Topic, p, isr...)
	}
}

// inSync puts every replica of the topic back in sync.
func (d *demo) inSync() {
	for p := range int32(3) {
		d.st.Kafka.Restore(Topic, p)
	}
}

// world records something that happened outside the functions.
func (d *demo) world(what, outcome string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.timeline = append(d.timeline, Event{AtMS: time.Since(d.start).Milliseconds(), Event: what, Outcome: outcome})
	if outcome != "" {
		what += ": " + outcome
	}
	d.p.Note("%s", what)
}

// invoke delivers payload to function fn, records the invocation and returns the
// function's response, decoded.
func (d *demo) invoke(ctx context.Context, fn, what string, payload []byte) (map[string]any, error) {
	inv, err := d.f.invoke(ctx, fn, payload)
	ev := Event{AtMS: inv.Started.Sub(d.start).Milliseconds(), Event: what, Function: fn, CallsByAction: inv.Calls,
		DurationMS: inv.Result.Duration.Milliseconds(), ColdStart: inv.Result.ColdStart, RequestID: inv.RequestID,
		Response: inv.Response}
	for op, n := range inv.Calls {
		ev.Calls += n
		if isWrite(op) {
			ev.Writes += n
		}
	}
	var resp map[string]any
	if err != nil {
		ev.Outcome = "error: " + err.Error()
	} else if jerr := json.Unmarshal(inv.Response, &resp); jerr != nil {
		err = fmt.Errorf("the %s function answered %q: %w", fn, inv.Response, jerr)
	} else {
		ev.Outcome = Summarize(fn, resp)
	}
	d.mu.Lock()
	d.timeline = append(d.timeline, ev)
	d.mu.Unlock()
	return resp, err
}

// brokerUp delivers what AWS sends when instance id starts: its running state change
// (to dns) and then the launch lifecycle action (to launch); once the launch is
// completed, the broker starts and registers with Kafka. It returns the slot.
func (d *demo) brokerUp(ctx context.Context, id string) (int, error) {
	if _, err := d.invoke(ctx, "dns", "EC2: "+id+" is running", StateChangeEvent(id, "running")); err != nil {
		return 0, err
	}
	res, err := d.invoke(ctx, "launch", "launch lifecycle action of "+id, LifecycleEvent(d.st.Config.ASGName, id, true))
	if err != nil {
		return 0, err
	}
	if res["outcome"] != "continue" {
		return 0, fmt.Errorf("the launch of %s ended %v: %v", id, res["outcome"], res["reason"])
	}
	s := int(num(res["slot"]))
	node := d.st.Config.NodeID(s)
	d.mu.Lock()
	d.nodes[id] = node
	d.mu.Unlock()
	if err := d.k.started(ctx, int32(node)); err != nil {
		return 0, fmt.Errorf("starting broker %d: %w", node, err)
	}
	return s, nil
}

// launchThree: the group launches three instances, one per AZ, at once.
func (d *demo) launchThree(ctx context.Context) error {
	ids := make([]string, Slots)
	for i := range ids {
		var err error
		if ids[i], err = d.st.Launch(ctx, i); err != nil {
			return err
		}
	}
	d.world("the group launches three instances", "one in each of us-east-1a, b, c; Pending:Wait")
	slots := make([]int, Slots)
	errs := make([]error, Slots)
	err := d.p.Wait("three launch lifecycle actions, handled concurrently", func() error {
		var wg sync.WaitGroup
		for i, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				slots[i], errs[i] = d.brokerUp(ctx, id)
			}()
		}
		wg.Wait()
		return firstErr(errs)
	})
	if err != nil {
		return err
	}
	for i, id := range ids {
		l, err := d.store.Get(ctx, slots[i])
		if err != nil {
			return err
		}
		d.first[slots[i]] = l
		d.p.Note("%s is broker %d (slot %d): ENI %s with IP %s, volume %s", id, d.st.Config.NodeID(slots[i]), slots[i], l.ENIID, l.IP, l.VolumeID)
	}
	d.crashed = d.first[1].Holder
	return nil
}

// crash: broker 1's instance is terminated by EC2 with no lifecycle hook involved
// (a hardware failure); the state-change events reach dns and reconcile.
func (d *demo) crash(ctx context.Context) error {
	id := d.crashed
	if err := d.st.H.TerminateInstance(ctx, id); err != nil {
		return err
	}
	if err := d.k.crashed(1); err != nil {
		return err
	}
	d.world(fmt.Sprintf("EC2 terminates %s (broker 1)", id), "no hook, no warning; Kafka: broker 1 gone, under-replicated")
	if _, err := d.invoke(ctx, "dns", "EC2: "+id+" is shutting-down", StateChangeEvent(id, "shutting-down")); err != nil {
		return err
	}
	return d.p.Wait("the reconciler frees the dead broker's slot", func() error {
		res, err := d.invoke(ctx, "reconcile", "EC2: "+id+" is terminated", StateChangeEvent(id, "terminated"))
		if err != nil {
			return err
		}
		for _, s := range list(res["released"]) {
			d.released = append(d.released, int(num(s)))
		}
		if _, err := d.invoke(ctx, "dns", "EC2: "+id+" is terminated", StateChangeEvent(id, "terminated")); err != nil {
			return err
		}
		if !slices.Contains(d.released, 1) {
			return fmt.Errorf("reconcile released slots %v, not slot 1", d.released)
		}
		return nil
	})
}

// replace: the group's health check notices and launches a replacement in the AZ.
func (d *demo) replace(ctx context.Context) error {
	var err error
	if d.replacement, err = d.st.Launch(ctx, 1); err != nil {
		return err
	}
	d.k.catchingUp(1)
	d.world(fmt.Sprintf("the group replaces it: %s", d.replacement), "in us-east-1b; Pending:Wait")
	return d.p.Wait("the replacement takes slot 1", func() error {
		s, err := d.brokerUp(ctx, d.replacement)
		if err != nil {
			return err
		}
		l, err := d.store.Get(ctx, s)
		if err != nil {
			return err
		}
		was := d.first[1]
		d.p.Note("%s is broker 1: IP %s (was %s), volume %s (was %s); broker 1 catching up", d.replacement, l.IP, was.IP, l.VolumeID, was.VolumeID)
		return nil
	})
}

// scaleIn: the group scales in and picks broker 0 while broker 1 is still catching
// up, so every partition is at min ISR with broker 0 in its ISR.
func (d *demo) scaleIn(ctx context.Context) error {
	d.leaver = d.first[0].Holder
	d.world(fmt.Sprintf("the group scales in: %s (broker 0)", d.leaver), "3 to 2; Terminating:Wait")
	type result struct {
		res map[string]any
		err error
	}
	done := make(chan result, 1)
	began := time.Now()
	go func() {
		res, err := d.invoke(ctx, "terminate", "terminate lifecycle action of "+d.leaver, LifecycleEvent(d.st.Config.ASGName, d.leaver, false))
		done <- result{res, err}
	}()
	// Let the function check twice and hold on; then broker 1 catches up.
	err := d.p.Wait("the terminate function holds the termination: removal is not safe", func() error {
		for len(d.holdReasons) < 2 {
			select {
			case why := <-d.holds:
				d.holdReasons = append(d.holdReasons, why)
			case r := <-done:
				done <- r
				return fmt.Errorf("the terminate function finished without holding on (outcome %v)", r.res["outcome"])
			case <-time.After(30 * time.Second):
				return fmt.Errorf("the terminate function did not report holding on within 30s")
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	first, _, _ := strings.Cut(d.holdReasons[0], "; ") // the first blocking partition
	d.p.Note("held: %s", first)
	if err := d.k.caughtUp(ctx); err != nil {
		return err
	}
	d.world("broker 1 has caught up", "every partition of "+Topic+" in sync on brokers 0, 1, 2")
	var r result
	err = d.p.Wait("the termination goes ahead: shutdown, detach, release, CONTINUE", func() error {
		r = <-done
		return r.err
	})
	if err != nil {
		return err
	}
	d.heldFor, d.leaverResult = time.Since(began), r.res
	if r.res["outcome"] != "released" || r.res["planned"] != true || r.res["forced"] == true {
		return fmt.Errorf("the termination ended %v (planned %v, forced %v): %v", r.res["outcome"], r.res["planned"], r.res["forced"], r.res["reason"])
	}
	// CONTINUE: the group terminates the instance; its state changes follow.
	if err := d.st.H.TerminateInstance(ctx, d.leaver); err != nil {
		return err
	}
	d.world("the group terminates "+d.leaver, "Terminating:Proceed")
	if _, err := d.invoke(ctx, "dns", "EC2: "+d.leaver+" is terminated", StateChangeEvent(d.leaver, "terminated")); err != nil {
		return err
	}
	_, err = d.invoke(ctx, "reconcile", "EC2: "+d.leaver+" is terminated", StateChangeEvent(d.leaver, "terminated"))
	return err
}

// scaleOut: the group grows back to 3; the AZ short of a broker is us-east-1a.
func (d *demo) scaleOut(ctx context.Context) error {
	var err error
	if d.returner, err = d.st.Launch(ctx, 0); err != nil {
		return err
	}
	d.world(fmt.Sprintf("the group scales out: %s", d.returner), "2 to 3, in us-east-1a; Pending:Wait")
	return d.p.Wait("the new instance takes slot 0", func() error {
		if _, err := d.brokerUp(ctx, d.returner); err != nil {
			return err
		}
		if err := d.k.caughtUp(ctx); err != nil {
			return err
		}
		d.world("broker 0 starts and catches up", "every partition in sync")
		return nil
	})
}

// grow: broker 2's disk alarm fires and invokes the grow function.
func (d *demo) grow(ctx context.Context) error {
	l, err := d.store.Get(ctx, 2)
	if err != nil {
		return err
	}
	cfg := d.st.Config
	d.world(fmt.Sprintf("CloudWatch: %s's disk at 86.3 %%", l.Holder), fmt.Sprintf("alarm slotkeeper-%s-disk-2: ALARM", cfg.Cluster))
	return d.p.Wait("the grow function grows broker 2's volume and filesystem", func() error {
		res, err := d.invoke(ctx, "grow", "alarm action: slot 2's disk alarm", AlarmEvent(cfg.Cluster, 2, l.Holder, cfg.Grow.DataMount, 84.9, 86.3, float64(cfg.Grow.ThresholdPercent)))
		if err != nil {
			return err
		}
		if res["outcome"] != "grown" {
			return fmt.Errorf("grow ended %v: %v", res["outcome"], res["reason"])
		}
		d.grown = res
		return nil
	})
}

// newGroup sets up the part of the Auto Scaling group moto does not play (Group) for
// the roll: the terminate and launch functions on the lifecycle actions, the state
// changes of a terminated instance to dns and reconcile, and the brokers' Kafka.
func (d *demo) newGroup() error {
	g, err := NewGroup(d.r, d.st)
	if err != nil {
		return err
	}
	asg := d.st.Config.ASGName
	g.Evicted = func(id string) {
		d.world("slotctl roll evicts "+id, "TerminateInstanceInAutoScalingGroup, capacity kept; Terminating:Wait")
	}
	g.Terminate = func(ctx context.Context, id string) error {
		res, err := d.invoke(ctx, "terminate", "terminate lifecycle action of "+id, LifecycleEvent(asg, id, false))
		if err != nil {
			return err
		}
		if res["outcome"] != "released" || res["planned"] != true || res["forced"] == true {
			return fmt.Errorf("the termination of %s ended %v (planned %v, forced %v): %v", id, res["outcome"], res["planned"], res["forced"], res["reason"])
		}
		return nil
	}
	g.Terminated = func(ctx context.Context, id string) {
		d.world("the group terminates "+id, "Terminating:Proceed")
		for _, fn := range []string{"dns", "reconcile"} {
			if _, err := d.invoke(ctx, fn, "EC2: "+id+" is terminated", StateChangeEvent(id, "terminated")); err != nil {
				d.r.Errorf("%s on the termination of %s: %v", fn, id, err)
			}
		}
	}
	g.Launched = func(_ context.Context, id string) {
		d.world("the group launches "+id, "in the AZ that lost a broker; Pending:Wait")
	}
	g.Launch = func(ctx context.Context, id string) (string, int, error) {
		s, err := d.brokerUp(ctx, id)
		if err != nil {
			return "", -1, err
		}
		node := int32(d.st.Config.NodeID(s))
		d.world(fmt.Sprintf("broker %d starts on %s", node, id), "registered; catching up")
		d.bg.Add(1)
		time.AfterFunc(time.Second, func() {
			defer d.bg.Done()
			d.caughtUp(node)
		})
		return "continue", s, nil
	}
	d.group = g
	return nil
}

// behind: during the roll, a stopped controller falls behind the quorum, and a leader
// that stops hands its leadership to a caught-up voter.
func (d *demo) behind(node int32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.rolling || !slices.Contains(d.quorum.Voters, node) {
		return
	}
	d.quorum.Behind[node] = fakekafka.Unknown
	if d.quorum.Leader == node {
		for _, v := range d.quorum.Voters {
			if _, b := d.quorum.Behind[v]; !b {
				d.quorum.Leader = v
				break
			}
		}
	}
	d.st.Kafka.SetQuorum(d.quorum)
}

// caughtUp: a restarted broker has caught up: every partition in sync, and the quorum.
func (d *demo) caughtUp(node int32) {
	if d.st.Real != nil {
		// Apache Kafka brings the broker back in sync by itself; roll waits for it.
		d.world(fmt.Sprintf("broker %d is catching up", node), "Kafka replicates the minutes it missed")
		return
	}
	d.inSync()
	d.mu.Lock()
	if d.rolling {
		delete(d.quorum.Behind, node)
		d.st.Kafka.SetQuorum(d.quorum)
	}
	d.mu.Unlock()
	d.world(fmt.Sprintf("broker %d has caught up", node), "every partition in sync; the quorum caught up")
}

// nextSecond waits for the next second and returns it (EC2 launch times have a
// second's resolution).
func nextSecond() time.Time {
	next := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(next))
	return next.UTC()
}

// rollAll: slotctl roll replaces every broker, one at a time.
func (d *demo) rollAll(ctx context.Context) error {
	var err error
	if d.beforeRoll, err = slotctl.Inspect(ctx, d.st.Clients(), d.st.Config, slotctl.SurveyOptions{KnownSubnets: true}); err != nil {
		return fmt.Errorf("reading the slots: %w", err)
	}
	for _, r := range d.beforeRoll.Slots {
		d.rollHolders = append(d.rollHolders, r.Holder)
	}
	if err := d.st.Join(ctx, d.rollHolders...); err != nil { // in the group, InService
		return err
	}
	d.mu.Lock()
	d.rolling = true
	d.quorum = fakekafka.Quorum{Leader: 0, Voters: []int32{0, 1, 2}, Behind: map[int32]time.Duration{}}
	if d.st.Real == nil { // Apache Kafka's quorum is its own
		d.st.Kafka.SetQuorum(d.quorum)
	}
	d.mu.Unlock()
	d.world("a new image: every broker is to be replaced", "brokers 0, 1, 2 are also the KRaft controllers; 0 leads the quorum")
	since := nextSecond()
	cfg := d.st.H.AWSConfig()
	cfg.BaseEndpoint = aws.String(d.group.URL)
	c := slotctl.NewClients(cfg)
	c.KafkaConfig = d.st.Config.Kafka
	defer c.Close()
	d.rollBegan = time.Now()
	d.p.Note("slotctl roll --launched-before %s", since.Format(time.RFC3339))
	d.roll, err = slotctl.Roll(ctx, c, d.st.Config, slotctl.RollOptions{
		LaunchedBefore: since, Poll: 200 * time.Millisecond, StepTimeout: 2 * time.Minute,
		Progress: func(line string) { d.p.Note("roll %s", strings.TrimSpace(line)) },
	}, d.opt.Out)
	d.group.Wait()
	if err != nil {
		return fmt.Errorf("slotctl roll: %w", err)
	}
	if errs := d.group.Errs(); len(errs) > 0 {
		return fmt.Errorf("the group during the roll: %w", errors.Join(errs...))
	}
	return nil
}

// reconcile: the scheduled run, which repairs drift and reads Kafka's health.
func (d *demo) reconcile(ctx context.Context) error {
	return d.p.Wait("the scheduled reconcile checks everything", func() error {
		_, err := d.invoke(ctx, "reconcile", "schedule (every 5 minutes)", ScheduleEvent())
		return err
	})
}

// checks tests the story's claims against the final state, and those of steps 1-6
// against the slots as the roll found them.
func (d *demo) checks(sv slotctl.Survey) []Check {
	row := func(s int) slotctl.SlotRow {
		if s < len(d.beforeRoll.Slots) {
			return d.beforeRoll.Slots[s]
		}
		return slotctl.SlotRow{}
	}
	var out []Check
	add := func(ok bool, claim, detail string, args ...any) {
		out = append(out, Check{Claim: claim, OK: ok, Detail: fmt.Sprintf(detail, args...)})
	}
	azs := map[string]bool{}
	for s := range Slots {
		azs[d.first[s].HolderAZ] = d.first[s].State == lease.Bound
	}
	add(len(d.first) == Slots && len(azs) == Slots && !slices.Contains(mapsValues(azs), false),
		"three brokers launched together took slots 0, 1, 2, one per AZ", "%d slots bound in %d AZs", len(d.first), len(azs))
	add(slices.Equal(d.released, []int{1}), "the reconciler freed the dead broker's slot", "released slots %v", d.released)
	r1, was1 := row(1), d.first[1]
	add(r1.Holder == d.replacement && r1.IP == was1.IP && r1.Volume == was1.VolumeID && r1.ENI == was1.ENIID,
		"the replacement is broker 1 with the same IP and volume", "holder %s, IP %s (was %s), volume %s (was %s)", r1.Holder, r1.IP, was1.IP, r1.Volume, was1.VolumeID)
	checksMade := int(num(d.leaverResult["safety_checks"]))
	add(len(d.holdReasons) >= 2 && checksMade > len(d.holdReasons)-1 && d.leaverResult["forced"] != true,
		"the planned scale-in was held while unsafe and went ahead once safe", "%d unsafe checks, %d checks in all, %s from event to CONTINUE, not forced",
		len(d.holdReasons), checksMade, round(d.heldFor))
	r0, was0 := row(0), d.first[0]
	add(r0.Holder == d.returner && r0.IP == was0.IP && r0.Volume == was0.VolumeID,
		"the scale-out's instance is broker 0 with the same IP and volume", "holder %s, IP %s (was %s), volume %s (was %s)", r0.Holder, r0.IP, was0.IP, r0.Volume, was0.VolumeID)
	r2 := row(2)
	add(d.grown != nil && r2.SizeGiB == int32(num(d.grown["to_gib"])) && r2.SizeGiB > VolumeGiB,
		"broker 2's volume grew", "%d GiB -> %d GiB (volume %s)", VolumeGiB, r2.SizeGiB, r2.Volume)
	var order []string
	rollOK := d.roll.Done && len(d.roll.Steps) == Slots
	for i, st := range d.roll.Steps {
		order = append(order, fmt.Sprint(st.Slot))
		final := slotctl.SlotRow{}
		if st.Slot < len(sv.Slots) {
			final = sv.Slots[st.Slot]
		}
		rollOK = rollOK && st.Old == d.rollHolders[st.Slot] && st.New == final.Holder && st.New != st.Old &&
			st.VolumeAfter == st.Volume && st.ENIAfter == st.ENI && final.Volume == st.Volume && st.InSyncAtMS > st.BoundAtMS
		if i > 0 {
			rollOK = rollOK && st.EvictedAtMS > d.roll.Steps[i-1].InSyncAtMS
		}
	}
	// The leader goes last: no step before the last took the quorum leader. On kfake
	// the script fixes the leader (node 0), and so the order; Apache Kafka elects its own.
	for i, st := range d.roll.Steps {
		rollOK = rollOK && (i == len(d.roll.Steps)-1 || st.Role != slotctl.RoleLeader)
	}
	if d.st.Real == nil {
		rollOK = rollOK && strings.Join(order, ",") == "1,2,0"
	}
	add(rollOK, "slotctl roll replaced every broker one at a time, the quorum leader last, each on its own volume and IP",
		"order: slots %s; each eviction after the previous broker was back in sync; %s in all", strings.Join(order, ", "),
		round(time.Duration(d.roll.ElapsedMS)*time.Millisecond))
	bound := 0
	for _, r := range sv.Slots {
		if r.State == string(lease.Bound) && r.HolderState == "running" {
			bound++
		}
	}
	add(bound == Slots, "every slot is bound to a running broker", "%d of %d slots", bound, Slots)
	dnsOK := sv.DNS != nil && len(sv.DNS.Drift) == 0 && len(sv.DNS.Bootstrap) == Slots
	for _, r := range sv.Slots {
		dnsOK = dnsOK && len(r.DNSValues) == 1 && r.DNSValues[0] == r.IP
	}
	drift := []string{}
	if sv.DNS != nil {
		drift = sv.DNS.Drift
	}
	add(dnsOK, "DNS follows the slots: broker-0..2 and bootstrap", "drift %v", drift)
	kOK := sv.Kafka != nil && sv.Kafka.Error == "" && len(sv.Kafka.Brokers) == Slots && sv.Kafka.UnderReplicated == 0 && sv.Kafka.Offline == 0
	kafka := "not asked"
	if k := sv.Kafka; k != nil {
		kafka = strings.TrimSpace(fmt.Sprintf("brokers %v, %d under-replicated, %d offline %s", k.Brokers, k.UnderReplicated, k.Offline, k.Error))
	}
	add(kOK, "Kafka: three brokers registered, every partition in sync", "%s", kafka)
	comps := d.st.H.Completions()
	cont := 0
	for _, c := range comps {
		if c.Result == "CONTINUE" {
			cont++
		}
	}
	forbidden := d.st.H.Forbidden()
	add(cont == len(comps) && len(comps) == 12 && len(forbidden) == 0,
		"every lifecycle action was completed with CONTINUE; no volume or ENI was ever deleted",
		"%d of %d completions CONTINUE (8 launches, 4 terminations); forbidden calls %v", cont, len(comps), forbidden)
	return out
}

func mapsValues(m map[string]bool) []bool {
	var v []bool
	for _, b := range m {
		v = append(v, b)
	}
	return v
}

func firstErr(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// num reads a JSON number (float64) as a float, 0 when absent.
func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

func shorten(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
