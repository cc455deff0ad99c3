package remote_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slotkeeper/slotkeeper/shared/remote"
	"github.com/slotkeeper/slotkeeper/test/harness"
)

// Against moto: a command to a running instance is sent with the script and its
// result read back; throttling on the result is retried.
func TestRunAgainstMoto(t *testing.T) {
	h := harness.Start(t)
	w := h.NewWorld(t, "remote")
	id := h.RunInstance(t, w, w.Subnets[0].ID)
	r := &remote.Runner{SSM: ssm.NewFromConfig(h.AWSConfig()), Timeout: 10 * time.Second, Poll: 20 * time.Millisecond}
	h.Inject(harness.Fault{Action: "GetCommandInvocation", Kind: harness.Throttle, Times: 2})
	res, err := r.Run(context.Background(), id, "controlled shutdown", []string{"systemctl stop kafka"})
	if err != nil {
		t.Fatal(err)
	}
	if res.CommandID == "" || res.Status != "Success" {
		t.Fatalf("result %+v", res)
	}
	if h.Calls("SendCommand") != 1 || h.Calls("GetCommandInvocation") < 3 {
		t.Fatalf("calls %v", h.CallCounts())
	}
	if errors.Is(err, remote.ErrFailed) {
		t.Fatal("success reported as failure")
	}
}
