package slotctl_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// reset against moto: its refusals, its dry run and its act, each with its exit code;
// and status showing what reset is for (a recorded volume that is gone) and a holder
// whose user data refused to start Kafka.
func TestResetAgainstMoto(t *testing.T) {
	h := harness.Start(t)
	f := newFixture(t, h, "rs")
	ctx := context.Background()
	direct := ec2.NewFromConfig(h.DirectConfig())
	rec, err := f.store.Get(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}

	// A holder whose bootstrap refused: status says so, with the reason.
	if _, err := direct.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{f.ids[0]}, Tags: []ec2types.Tag{
		{Key: aws.String("slotkeeper:refused"), Value: aws.String("/var/lib/kafka/data/meta.properties: node.id=2 but slot 0 is node 0")}}}); err != nil {
		t.Fatal(err)
	}
	st := decode[slotctl.Survey](t, f.run(nil, "status", "--json"))
	if !slices.Contains(st.Problems, "slot 0: holder "+f.ids[0]+" refused to start Kafka: /var/lib/kafka/data/meta.properties: node.id=2 but slot 0 is node 0") ||
		st.Slots[0].Refused == "" {
		t.Errorf("status problems %q, row %+v: want the refusal", st.Problems, st.Slots[0])
	}

	check := func(name string, args []string, wantCode int, want string) slotctl.Reset {
		t.Helper()
		h.ResetCounts()
		r := f.run(nil, append(args, "--json")...)
		doc := decode[map[string]any](t, r)
		text := r.stdout + r.stderr
		if r.code != wantCode || !strings.Contains(text, want) {
			t.Errorf("%s: exit %d, want %d with %q\n%s\n%s", name, r.code, wantCode, want, r.stdout, r.stderr)
		}
		if m := h.MutatingCalls(); doc["done"] != true && len(m) > 0 {
			t.Errorf("%s changed nothing, yet made mutating calls %v", name, m)
		}
		return decode[slotctl.Reset](t, r)
	}
	check("no reason", []string{"reset", "1"}, slotctl.ExitUsage, "reset needs --reason")
	check("not a slot", []string{"reset", "7", "--reason", "x"}, slotctl.ExitUsage, "is not a slot of cluster")
	check("the volume exists", []string{"reset", "1", "--reason", "x", "--yes"}, slotctl.ExitRefused, "still exist(s): nothing to reset")

	// Slot 1's holder dies, the slot is released, and its volume is deleted.
	f.h.TerminateInstance(t, f.ids[1])
	if _, err := f.store.Release(ctx, rec, "holder terminated"); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.DeleteVolume(ctx, &ec2.DeleteVolumeInput{VolumeId: aws.String(rec.VolumeID)}); err != nil {
		t.Fatal(err)
	}
	st = decode[slotctl.Survey](t, f.run(nil, "status", "--json"))
	if !slices.ContainsFunc(st.Problems, func(p string) bool {
		return strings.HasPrefix(p, "slot 1: recorded volume "+rec.VolumeID+" is gone") && strings.Contains(p, "slotctl reset 1")
	}) || st.Slots[1].VolumeState != "gone" {
		t.Errorf("status problems %q, row %+v: want the gone volume", st.Problems, st.Slots[1])
	}

	dry := check("dry run", []string{"reset", "1", "--reason", "deleted by mistake"}, slotctl.ExitRefused, `"dry_run": true`)
	if !dry.DryRun || dry.Done || len(dry.Forget) != 1 || dry.Forget[0].ID != rec.VolumeID || !strings.HasPrefix(dry.Actor, "slotctl/") {
		t.Errorf("dry run %+v", dry)
	}
	done := check("--yes", []string{"reset", "1", "--reason", "deleted by mistake", "--yes"}, slotctl.ExitOK, `"done": true`)
	if m := slices.DeleteFunc(h.MutatingCalls(), func(a string) bool { return a == "GetCallerIdentity" }); !slices.Equal(m, []string{"UpdateItem"}) {
		t.Errorf("reset --yes made %v, want one UpdateItem", m)
	}
	l, err := f.store.Get(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	last := l.History[len(l.History)-1]
	if l.VolumeID != "" || l.ENIID != rec.ENIID || l.State != lease.Free || l.Version != rec.Version+1 ||
		last.Actor != done.Actor || !strings.Contains(last.Reason, "deleted by mistake") || !strings.Contains(last.Reason, rec.VolumeID) {
		t.Errorf("after reset: %+v, last entry %+v", l, last)
	}
	again := check("again", []string{"reset", "1", "--reason", "deleted by mistake", "--yes"}, slotctl.ExitOK, `"nothing_recorded": true`)
	if !again.Nothing || again.Done {
		t.Errorf("second reset %+v", again)
	}

	help := f.run(nil, "reset", "--help")
	if help.code != slotctl.ExitOK || !strings.Contains(help.stdout, "Example:") || !strings.Contains(help.stdout, "slotctl reset 1 --reason") {
		t.Errorf("reset --help:\n%s", help.stdout)
	}
	t.Logf("dry run: exit 4, forget %s; --yes: exit 0, 1 UpdateItem, history %q by %q", rec.VolumeID, last.Reason, last.Actor)
}
