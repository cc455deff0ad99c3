package slotctl_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/test/harness"
	"github.com/slotkeeper/slotkeeper/test/realkafka"
	"github.com/slotkeeper/slotkeeper/test/realkafka/realkafkatest"
)

// slotctl status and preflight against Apache Kafka itself (three KRaft nodes, the
// slots' node ids), with every broker up and with broker 1 stopped as
// `systemctl stop kafka` stops it (SIGTERM).
func TestCommandsAgainstRealKafka(t *testing.T) {
	h := harness.Start(t)
	k := realkafkatest.Start(t, realkafka.Options{Nodes: demo.Slots})
	f := newFixtureOf(t, h, demo.NewStageWith(t, h, "rk", demo.StageOptions{RealKafka: k}))

	status := func(name string, wantCode int) slotctl.Survey {
		t.Helper()
		r := f.run(nil, "status", "--json", "--timeout", "30s")
		sv := decode[slotctl.Survey](t, r)
		human := f.run(nil, "status", "--timeout", "30s")
		t.Logf("slotctl status, %s: exit %d\n%s", name, human.code, human.stdout)
		if r.code != wantCode || human.code != wantCode {
			t.Errorf("%s: status exit %d (table %d), want %d; problems %v", name, r.code, human.code, wantCode, sv.Problems)
		}
		return sv
	}
	preflight := func(name string) slotctl.PreflightReport {
		t.Helper()
		r := f.run(nil, "preflight", "--json", "--timeout", "30s")
		rep := decode[slotctl.PreflightReport](t, r)
		human := f.run(nil, "preflight", "--timeout", "30s")
		t.Logf("slotctl preflight, %s: exit %d\n%s", name, human.code, human.stdout)
		for _, c := range rep.Checks {
			if c.Result != slotctl.CheckOK {
				t.Errorf("%s: preflight check %s: %s (%s)", name, c.Name, c.Result, c.Detail)
			}
		}
		if r.code != slotctl.ExitOK {
			t.Errorf("%s: preflight exit %d", name, r.code)
		}
		return rep
	}

	sv := status("every broker up", slotctl.ExitOK)
	if kh := sv.Kafka; kh == nil || !slices.Equal(kh.Brokers, []int32{0, 1, 2}) || kh.UnderReplicated != 0 || kh.Offline != 0 || kh.Error != "" {
		t.Errorf("Kafka health %+v, want brokers [0 1 2] all in sync", sv.Kafka)
	}
	for _, row := range sv.Slots {
		if row.Registered == nil || !*row.Registered {
			t.Errorf("slot %d: broker not reported registered: %+v", row.Slot, row)
		}
	}
	rep := preflight("every broker up")
	i := slices.IndexFunc(rep.Checks, func(c slotctl.Check) bool { return c.Name == "topics" })
	if i < 0 || !strings.Contains(rep.Checks[i].Detail, "partition") {
		t.Errorf("topics check %+v", rep.Checks)
	}

	if err := k.Nodes[1].Stop(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := k.WaitUnregistered(ctx, 1); err != nil {
		t.Fatal(err)
	}
	sv = status("broker 1 stopped", slotctl.ExitProblem)
	for _, want := range []string{"slot 1: broker 1 is not registered in Kafka", "Kafka: 3 under-replicated partition(s)"} {
		if !slices.ContainsFunc(sv.Problems, func(p string) bool { return strings.HasPrefix(p, want) }) {
			t.Errorf("broker 1 stopped: problems %q lack one starting %q", sv.Problems, want)
		}
	}
	preflight("broker 1 stopped")

	if err := k.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		r := f.run(nil, "status", "--json", "--timeout", "30s")
		if r.code == slotctl.ExitOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status after the restart: exit %d, problems %v", r.code, decode[slotctl.Survey](t, r).Problems)
		}
		time.Sleep(200 * time.Millisecond)
	}
	status("broker 1 restarted", slotctl.ExitOK)
	if m := f.h.MutatingCalls(); len(m) > 0 {
		t.Errorf("status and preflight made mutating calls %v", m)
	}
}
