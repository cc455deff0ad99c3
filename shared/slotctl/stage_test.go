package slotctl_test

import (
	"context"
	"testing"

	"github.com/slotkeeper/slotkeeper/shared/slotctl/demo"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// newStage builds the demo's deployment in h for one test (demo.NewStageWith) and
// stops its Kafka when the test ends.
func newStage(t *testing.T, h *harness.Harness, cluster string, opt demo.StageOptions) *demo.Stage {
	t.Helper()
	st, err := demo.NewStageWith(context.Background(), h.Emulator, cluster, opt)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(st.Close)
	return st
}

// launchOne runs an instance of the stage's group in subnet i (demo.Stage.Launch).
func launchOne(t *testing.T, st *demo.Stage, i int) string {
	t.Helper()
	id, err := st.Launch(context.Background(), i)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return id
}

// join attaches instances to the stage's group, InService (demo.Stage.Join).
func join(t *testing.T, st *demo.Stage, ids ...string) {
	t.Helper()
	if err := st.Join(context.Background(), ids...); err != nil {
		t.Fatalf("%v", err)
	}
}
