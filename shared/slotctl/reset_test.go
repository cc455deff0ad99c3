package slotctl_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/slotkeeper/slotkeeper/shared/kafka/kafkatest"
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

	var env map[string]string // the configuration's changes for the next check
	check := func(name string, args []string, wantCode int, want string) slotctl.Reset {
		t.Helper()
		h.ResetCounts()
		r := f.run(env, append(args, "--json")...)
		env = nil
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
	check("the volume exists", []string{"reset", "1", "--reason", "x", "--yes"}, slotctl.ExitRefused, "exist(s) and can be attached: nothing to reset")

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

	// Slot 1's node is a KRaft controller voter (kfake answers DescribeQuorum as a
	// cluster of three combined nodes would: voters 0, 1, 2, all caught up). Forgetting
	// its volume would bring back an empty-log voter: refused, whatever else holds.
	check("a voter", []string{"reset", "1", "--reason", "deleted by mistake"}, slotctl.ExitRefused,
		"broker 1 is a KRaft controller voter (voters [0 1 2]): a new, empty volume would bring back a voter with an empty log")
	check("a voter, --yes", []string{"reset", "1", "--reason", "deleted by mistake", "--yes"}, slotctl.ExitRefused, "broker 1 is a KRaft controller voter")
	f.st.Kafka.SetQuorum(kafkatest.Quorum{Leader: 0, Voters: []int32{0, 1, 2}, Behind: map[int32]time.Duration{2: 30 * time.Second}})
	check("a voter, --voter, voter 2 lagging", []string{"reset", "1", "--reason", "deleted by mistake", "--voter", "--yes"}, slotctl.ExitRefused,
		"controller 1 may not leave: only 1 caught-up voters [0] would remain of [0 1 2], a majority is 2")
	env = map[string]string{"KAFKA_BOOTSTRAP": ""}
	check("Kafka not configured", []string{"reset", "1", "--reason", "deleted by mistake", "--voter"}, slotctl.ExitRefused,
		"cannot tell whether broker 1 is a KRaft controller voter: Kafka is not configured")
	f.st.Kafka.SetQuorum(kafkatest.Quorum{ErrorCode: kerr.NotLeaderForPartition.Code})
	check("Kafka cannot answer", []string{"reset", "1", "--reason", "deleted by mistake", "--voter", "--yes"}, slotctl.ExitRefused,
		"cannot tell whether broker 1 is a KRaft controller voter: describing the controller quorum")
	f.st.Kafka.SetQuorum(kafkatest.Quorum{Leader: 0, Voters: []int32{0, 1, 2}})
	voterDry := check("a voter, --voter, the others caught up: dry run", []string{"reset", "1", "--reason", "deleted by mistake", "--voter"}, slotctl.ExitRefused, `"dry_run": true`)
	if !strings.HasPrefix(voterDry.Quorum, "controller 1 may leave: 2 caught-up voters [0 2] remain") {
		t.Errorf("dry run for a caught-up quorum: quorum %q", voterDry.Quorum)
	}
	if l, err := f.store.Get(ctx, 1); err != nil || l.VolumeID != rec.VolumeID {
		t.Fatalf("a refusal or dry run changed the lease: %+v %v", l, err)
	}

	// The lost voter was removed from a dynamic quorum (kafka-metadata-quorum.sh
	// remove-controller): node 1 is no voter now, and reset proceeds.
	f.st.Kafka.SetQuorum(kafkatest.Quorum{Leader: 0, Voters: []int32{0, 2}})
	dry := check("dry run", []string{"reset", "1", "--reason", "deleted by mistake"}, slotctl.ExitRefused, `"dry_run": true`)
	if !dry.DryRun || dry.Done || len(dry.Forget) != 1 || dry.Forget[0].ID != rec.VolumeID || dry.Forget[0].Why != "is gone" ||
		len(dry.Keep) != 1 || dry.Keep[0].ID != rec.ENIID || !strings.HasPrefix(dry.Actor, "slotctl/") ||
		dry.Quorum != "node 1 is not a controller voter (voters [0 2])" {
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
		last.Actor != done.Actor || !strings.Contains(last.Reason, "deleted by mistake") || !strings.Contains(last.Reason, rec.VolumeID+" is gone") ||
		!strings.Contains(last.Reason, "node 1 is not a controller voter") {
		t.Errorf("after reset: %+v, last entry %+v", l, last)
	}
	again := check("again", []string{"reset", "1", "--reason", "deleted by mistake", "--yes"}, slotctl.ExitOK, `"nothing_recorded": true`)
	if !again.Nothing || again.Done {
		t.Errorf("second reset %+v", again)
	}

	help := f.run(nil, "reset", "--help")
	if help.code != slotctl.ExitOK || !strings.Contains(help.stdout, "Examples:") || !strings.Contains(help.stdout, "slotctl reset 1 --reason") ||
		!strings.Contains(help.stdout, "remove-controller --controller-id <node id> --controller-directory-id") || !strings.Contains(help.stdout, "--voter") {
		t.Errorf("reset --help:\n%s", help.stdout)
	}
	t.Logf("voter 1: refused without --voter, refused with a lagging voter, refused without Kafka; dry run: exit 4, forget %s; --yes: exit 0, 1 UpdateItem, history %q by %q",
		rec.VolumeID, last.Reason, last.Actor)
}
