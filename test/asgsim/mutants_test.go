package asgsim_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/test/asgsim"
)

var (
	mutantsFlag    = flag.String("mutants", "", "run these mutants (comma-separated names, or all) through the campaign (TestMutants)")
	mutantSeeds    = flag.Int("mutant-seeds", 40, "how many seeds a mutant gets to be caught in")
	stopFirstFlag  = flag.Bool("stop-at-first", false, "end the campaign at the first failing seed")
	mutantWorkers  = flag.Int("mutant-workers", 2, "workers of each mutant's campaign")
	mutantShrink   = flag.Int("mutant-shrink", 12, "runs spent shrinking a mutant's failing seed")
	mutantFirstArg = flag.Uint64("mutant-first", 1, "first seed of each mutant's campaign")
)

// mutant is a deliberately broken variant of the product code: one exact piece of a
// source file replaced, built into the campaign with go's -overlay (the tree is not
// touched). The campaign must catch it, naming the invariant it breaks.
//
// A mutant may name the plans that reach the code it breaks (reach, said in reaches):
// its campaign then runs the first seeds, from -mutant-first on, whose plans have
// them (drawn as every campaign draws them; only the choice of seeds is directed), so
// that a path that random plans take in one seed of fifty is not left to luck.
type mutant struct {
	name, file, old, new, why string
	// invariants are the invariants that may catch it (the first is the one it is
	// written against).
	invariants []string
	reaches    string
	reach      func(asgsim.Plan) bool
}

var mutants = []mutant{
	{
		name: "double-holder", file: "shared/slot/slot.go", invariants: []string{"one-holder"},
		why: "a bound slot is claimable although its holder runs (Priam's lesson forgotten)",
		old: "\t\tif Dead(holderState) {\n\t\t\treturn true, \"holder \"",
		new: "\t\tif holderState != \"\" || Dead(holderState) {\n\t\t\treturn true, \"holder \"",
	},
	{
		name: "attach-to-non-holder", file: "shared/slot/slot.go", invariants: []string{"attach-to-holder"},
		reaches: "6 slots (two per AZ: two launches of one AZ claim at the same time)",
		reach:   twoSlotsPerAZ,
		why:     "the claim decision takes a slot of its AZ that another instance has claimed for this instance's own (as if redelivered), so its launch attaches that slot's ENI and volume",
		old:     "\t\tif l.HeldBy(instance) {\n\t\t\theld = append(held, s)",
		new:     "\t\tif l.HeldBy(instance) || (l.State == lease.Claimed && slices.Contains(azSlots, s)) {\n\t\t\theld = append(held, s)",
	},
	{
		// A second removal that the token lets through is caught at its broker's stop:
		// as a stop while the first removal still holds its slot, or, once that slot
		// was released, by the partition it takes below min ISR (its verdict was taken
		// before the first broker stopped).
		name: "two-removals-at-once", file: "shared/terminate/token.go", invariants: []string{"one-removal-at-a-time", "removal-safety"},
		why: "a removal takes the removal token while another removal holds it",
		old: "\t}\n\treturn tokenOther\n}",
		new: "\t}\n\treturn tokenTake\n}",
	},
	{
		name: "early-continue", file: "shared/terminate/terminate.go", invariants: []string{"early-continue"},
		why: "terminate completes the lifecycle action with CONTINUE as soon as it found the slot, before it hands it back",
		old: "\tinv.o = inv.o.With(obs.KeySlot, l.Slot, obs.KeyLeaseVersion, l.Version)\n\tbroker := int32(inv.cfg.NodeID(l.Slot))",
		new: "\tif err := inv.complete(ctx); err != nil {\n\t\treturn Result{}, err\n\t}\n\tinv.o = inv.o.With(obs.KeySlot, l.Slot, obs.KeyLeaseVersion, l.Version)\n\tbroker := int32(inv.cfg.NodeID(l.Slot))",
	},
	{
		name: "force-detach-running", file: "shared/resources/attach.go", invariants: []string{"force-detach-running"},
		reaches: "a failed stop, then a replacement (health, refresh, evict) that takes over the volume left attached while the old holder shuts down; or lost heartbeats",
		reach:   failedStopThenHandover,
		why:     "a detach in Force mode forces at once whatever the instance's state (shutting-down included)",
		old:     "\tforced := mode == Force && slot.Halted(st)",
		new:     "\tforced := mode == Force",
	},
	{
		name: "shrink", file: "shared/grow/policy.go", invariants: []string{"never-shrunk"},
		why:     "the growth policy subtracts its step instead of adding it (EBS refuses a smaller size; moto does not, so the invariant is what stops it)",
		reaches: "a disk alarm",
		reach:   hasOp(asgsim.GrowAlarm),
		old:     "\td.Action, d.ToGiB, d.Capped = Grow, int32(to), want > to",
		new:     "\td.Action, d.ToGiB, d.Capped = Grow, int32(2*int64(sizeGiB)-to), want > to",
	},
	{
		name: "growth-left-pending", file: "shared/lease/growth.go", invariants: []string{"converge-growth"},
		why:     "recording a finished growth never clears the pending growth it fulfils",
		reaches: "a disk alarm",
		reach:   hasOp(asgsim.GrowAlarm),
		old:     "\t\tfulfils := g.Pending != nil && g.Pending.VolumeID == rec.VolumeID && g.Pending.ToGiB <= rec.ToGiB",
		new:     "\t\tfulfils := false",
	},
	{
		name: "forgotten-completion", file: "shared/terminate/terminate.go", invariants: []string{"lifecycle-once"},
		why: "a termination of an instance that holds no slot returns success without completing its lifecycle action",
		old: "\t\tif err := inv.complete(ctx); err != nil {\n\t\t\treturn Result{}, err\n\t\t}\n\t\tinv.o.Log.InfoContext(ctx, \"instance holds no slot; nothing to hand back\"",
		new: "\t\tinv.o.Log.InfoContext(ctx, \"instance holds no slot; nothing to hand back\"",
	},
	{
		name: "released-slot-in-bootstrap", file: "shared/dns/records.go", invariants: []string{"converge-dns"},
		why:     "the bootstrap record keeps the address of a slot that was released (a scale-in)",
		reaches: "a scale-in",
		reach:   hasOp(asgsim.ScaleIn),
		old:     "\t\tif l.State == lease.Bound && known && h.State == slot.Running {",
		new:     "\t\tif (l.State == lease.Bound && known && h.State == slot.Running) || l.State == lease.Free {",
	},
	{
		name: "attach-in-use", file: "shared/resources/attach.go", invariants: []string{"one-attachment"},
		reaches: "a failed stop, then a replacement (health, refresh, evict) that takes over the volume left attached while the old holder shuts down; or lost heartbeats",
		reach:   failedStopThenHandover,
		why:     "the attach trusts a stale description of the volume (available) and attaches it while another instance still has it (AWS refuses with VolumeInUse; moto lets the attach replace the first)",
		old:     "\twaited := false\n\tif v.AttachedTo != \"\" && v.AttachedTo != instance {",
		new:     "\twaited := false\n\tif v.AttachedTo != instance {\n\t\tv.AttachedTo, v.State = \"\", \"available\"\n\t}\n\tif v.AttachedTo != \"\" && v.AttachedTo != instance {",
	},
	{
		name: "release-forgets-volume", file: "shared/lease/lease.go", invariants: []string{"identity"},
		why: "a release removes the slot's recorded volume with its holder, so the slot's next claim makes a new blank volume instead of reattaching the broker's data",
		old: "sets, []string{\"holder\", \"holder_az\"}, reason, now)",
		new: "sets, []string{\"holder\", \"holder_az\", \"volume_id\"}, reason, now)",
	},
	{
		name: "release-resets-version", file: "shared/lease/lease.go", invariants: []string{"lease-versions"},
		why: "a release writes the lease back at version 0 (as a fresh item) instead of moving the version on: the fencing token starts over",
		old: "\t\t\"version\":     num(l.Version + 1),",
		new: "\t\t\"version\":     num(0),",
	},
	{
		name: "alarm-of-slot-0", file: "shared/grow/alarm.go", invariants: []string{"converge-alarms"},
		why: "every slot's disk alarm is written under slot 0's name (a copy-and-paste slip), so slot 0's alarm watches whichever holder was written last and the other slots have none",
		old: "\t\tAlarmName: aws.String(AlarmName(cfg.Cluster, slot)),",
		new: "\t\tAlarmName: aws.String(AlarmName(cfg.Cluster, 0)),",
	},
}

// TestMutants builds each mutant (-mutants=all, or names) into the campaign and
// checks that the campaign catches it with the invariant it breaks. `make mutants`
// runs it; each mutant takes minutes, so make test does not.
func TestMutants(t *testing.T) {
	if *mutantsFlag == "" {
		t.Skip("no -mutants")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var results []string
	for _, m := range mutants {
		if *mutantsFlag != "all" && !strings.Contains(","+*mutantsFlag+",", ","+m.name+",") {
			continue
		}
		t.Run(m.name, func(t *testing.T) {
			line := runMutant(t, root, m)
			results = append(results, line)
		})
	}
	t.Logf("mutants:\n%s", strings.Join(results, "\n"))
}

// TestMutantsApply runs in every `make test` (TestMutants runs only in `make
// mutants`): each mutant's piece still occurs exactly once in its file, and the
// mutated file still parses, so that a change to the product code cannot quietly
// leave a mutant that no longer applies.
func TestMutantsApply(t *testing.T) {
	names := map[string]bool{}
	for _, m := range mutants {
		t.Run(m.name, func(t *testing.T) {
			if names[m.name] {
				t.Fatalf("two mutants are named %s", m.name)
			}
			names[m.name] = true
			if len(m.invariants) == 0 || m.why == "" || (m.reach == nil) != (m.reaches == "") {
				t.Fatalf("mutant %s: needs its invariants, its why, and a reach with its reaches (or neither)", m.name)
			}
			orig, err := os.ReadFile(filepath.Join("../..", m.file))
			if err != nil {
				t.Fatal(err)
			}
			if n := bytes.Count(orig, []byte(m.old)); n != 1 {
				t.Fatalf("the piece to replace occurs %d times in %s (it must occur once: update the mutant with the code)", n, m.file)
			}
			mutated := bytes.Replace(orig, []byte(m.old), []byte(m.new), 1)
			if _, err := parser.ParseFile(token.NewFileSet(), m.file, mutated, parser.SkipObjectResolution); err != nil {
				t.Fatalf("the mutated %s does not parse: %v", m.file, err)
			}
		})
	}
}

var violationLine = regexp.MustCompile(`(?m)^VIOLATION seed (\d+): \[([a-z-]+)\] (.*)$|^  also: \[([a-z-]+)\]`)

func runMutant(t *testing.T, root string, m mutant) string {
	src := filepath.Join(root, m.file)
	orig, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(orig, []byte(m.old)); n != 1 {
		t.Fatalf("mutant %s: the piece to replace occurs %d times in %s (it must occur once: update the mutant with the code)", m.name, n, m.file)
	}
	dir := t.TempDir()
	mutated := filepath.Join(dir, filepath.Base(m.file))
	if err := os.WriteFile(mutated, bytes.Replace(orig, []byte(m.old), []byte(m.new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	overlay, _ := json.Marshal(map[string]map[string]string{"Replace": {src: mutated}})
	overlayFile := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayFile, overlay, 0o644); err != nil {
		t.Fatal(err)
	}
	table := filepath.Join(dir, "table.txt")
	args := []string{"test", "-overlay=" + overlayFile, "-count=1", "-timeout=0", "-run=^TestCampaign$", ".",
		"-args", fmt.Sprintf("-seeds=%d", *mutantSeeds), fmt.Sprintf("-first=%d", *mutantFirstArg), fmt.Sprintf("-workers=%d", *mutantWorkers),
		fmt.Sprintf("-shrink=%d", *mutantShrink), "-stop-at-first", "-table=" + table}
	seeds := fmt.Sprintf("seeds %d..%d", *mutantFirstArg, *mutantFirstArg+uint64(*mutantSeeds)-1)
	if m.reach != nil {
		cases := reachingSeeds(m.reach, *mutantFirstArg, *mutantSeeds)
		list := filepath.Join(dir, "cases.txt")
		if err := os.WriteFile(list, []byte(strings.Join(cases, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-cases="+list)
		seeds = fmt.Sprintf("the first %d seeds from %d with %s: %s", len(cases), *mutantFirstArg, m.reaches, strings.Join(cases, " "))
	}
	start := time.Now()
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "AWS_XRAY_CONTEXT_MISSING=IGNORE_ERROR")
	out, err := cmd.CombinedOutput()
	took := time.Since(start).Round(time.Second)
	tab, rerr := os.ReadFile(table)
	if rerr != nil {
		t.Fatalf("mutant %s: no table (%v); go test said (%v):\n%s", m.name, rerr, err, tail(string(out), 60))
	}
	caught := ""
	var named []string
	for _, mm := range violationLine.FindAllStringSubmatch(string(tab), -1) {
		inv := mm[2] + mm[4]
		named = append(named, inv)
		if slices.Contains(m.invariants, inv) && caught == "" {
			caught = mm[0]
		}
	}
	t.Logf("mutant %s (%s: %s), %s, %s:\n%s", m.name, m.file, m.why, seeds, took, tab)
	want := strings.Join(m.invariants, " or ")
	if caught == "" {
		t.Errorf("mutant %s was not caught by %s in %s (invariants named: %v)", m.name, want, seeds, named)
		return fmt.Sprintf("%-26s NOT caught by %s (named: %v) in %s", m.name, want, named, took)
	}
	return fmt.Sprintf("%-26s caught: %s (%s)", m.name, strings.TrimSpace(caught), took)
}

// reachingSeeds returns the first n seeds from first whose plans reach says yes to.
func reachingSeeds(reach func(asgsim.Plan) bool, first uint64, n int) []string {
	var out []string
	for seed := first; len(out) < n && seed < first+100_000; seed++ {
		if reach(asgsim.NewPlan(seed)) {
			out = append(out, strconv.FormatUint(seed, 10))
		}
	}
	return out
}

// hasOp: the plan has an operation of kind k.
func hasOp(k asgsim.OpKind) func(asgsim.Plan) bool {
	return func(p asgsim.Plan) bool {
		return slices.ContainsFunc(p.Ops, func(op asgsim.Op) bool { return op.Kind == k })
	}
}

// twoSlotsPerAZ: 6 slots, two per AZ, so that two launches of one AZ (the group's
// first ones, or a replacement next to a launch) read the table while the other's
// claim is in flight. With one slot per AZ the group never launches two instances in
// one AZ at once.
func twoSlotsPerAZ(p asgsim.Plan) bool { return p.Slots == 6 }

// failedStopThenHandover: a stop fault (Kafka does not stop, the filesystem stays
// busy, or no result comes), then a termination with a replacement (health, refresh, evict)
// whose launch takes over what the failed stop left attached; or lost heartbeats,
// which let a termination go on while its invocation still runs.
func failedStopThenHandover(p asgsim.Plan) bool {
	stop := false
	for _, op := range p.Ops {
		switch op.Kind {
		case asgsim.StopFault:
			stop = true
		case asgsim.HealthReplace, asgsim.Refresh, asgsim.Evict:
			if stop {
				return true
			}
		case asgsim.LoseHeartbeats:
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
