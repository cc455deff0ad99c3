package dns

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/slotkeeper/slotkeeper/shared/app"
	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/obs"
)

// Outcomes of one dns function invocation (metric dimension Outcome, log field outcome).
const (
	OutcomeSynced    = "synced"
	OutcomeIgnored   = "ignored"
	OutcomeMalformed = "malformed"
	OutcomeRetry     = "retry"
)

// Handler is the dns function: it handles EC2 instance state-change events. Build it
// with NewHandler.
type Handler struct {
	cfg     config.Config
	sync    *Syncer
	store   *lease.Store
	log     *slog.Logger
	metrics io.Writer
}

// NewHandler returns the dns function's handler. metrics receives the
// embedded-metric-format lines (os.Stdout in Lambda).
func NewHandler(cfg config.Config, s *Syncer, log *slog.Logger, metrics io.Writer) *Handler {
	return &Handler{cfg: cfg, sync: s, store: s.store, log: log, metrics: metrics}
}

// Result says what one invocation did.
type Result struct {
	Outcome string `json:"outcome"`
	Slot    int    `json:"slot"`    // the instance's slot; -1 when none
	Changes int    `json:"changes"` // records changed
	Reason  string `json:"reason,omitempty"`
}

// Invoke is the Lambda entry point (it makes Handler a lambda.Handler): it takes the
// raw event, so that even a payload that is not JSON gets a clear error and log line.
func (h *Handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return app.Respond(h.Run(ctx, payload))
}

// Run handles one event. An event that is not a handled state change, or is about an
// instance that holds no slot of this cluster, is a logged no-op without a single
// mutating call. Otherwise the records are synced with the event's state taken into
// account (Syncer.InstanceChanged). A returned error means the event was malformed or
// should be delivered again.
func (h *Handler) Run(ctx context.Context, raw []byte) (res Result, err error) {
	o, finish := obs.Begin(h.log, h.metrics, h.cfg.MetricsNamespace, "dns", h.cfg.Cluster)
	defer func() {
		if err != nil && res.Outcome == "" {
			res.Outcome = OutcomeRetry
		}
		o.Metrics.Count("RecordChanges", float64(res.Changes))
		finish(ctx, res.Outcome, err)
	}()

	ev, err := ParseStateChange(raw)
	if err != nil {
		o.Log.ErrorContext(ctx, "rejecting state-change event", obs.KeyOutcome, OutcomeMalformed, obs.KeyErr, err.Error())
		return Result{Outcome: OutcomeMalformed, Slot: -1, Reason: err.Error()}, err
	}
	o = o.With(obs.KeyEvent, ev.ID)
	ignore := func(why string) (Result, error) {
		o.Log.InfoContext(ctx, "ignoring event", obs.KeyOutcome, OutcomeIgnored, obs.KeyReason, why)
		return Result{Outcome: OutcomeIgnored, Slot: -1, Reason: why}, nil
	}
	if ok, why := ev.Relevant(); !ok {
		return ignore(why)
	}
	if !h.cfg.DNS.Enabled() {
		return ignore("DNS is not managed (SLOTKEEPER_HOSTED_ZONE_ID is empty)")
	}
	o = o.With(obs.KeyInstance, ev.InstanceID, "state", ev.State)

	var leases []lease.Lease
	if err := o.Step(ctx, "read-leases", func(ctx context.Context) error {
		var err error
		leases, err = h.store.List(ctx)
		return err
	}); err != nil {
		return Result{Slot: -1}, err
	}
	l, ok := heldBy(leases, ev.InstanceID)
	if !ok {
		return ignore(fmt.Sprintf("instance %s holds no slot of cluster %s", ev.InstanceID, h.cfg.Cluster))
	}
	o = o.With(obs.KeySlot, l.Slot, obs.KeyLeaseVersion, l.Version)

	res = Result{Outcome: OutcomeSynced, Slot: l.Slot}
	err = o.Step(ctx, "sync", func(ctx context.Context) error {
		var err error
		res.Changes, err = h.sync.InstanceChanged(ctx, ev.InstanceID, ev.State)
		return err
	})
	if err != nil {
		o.Log.WarnContext(ctx, "DNS sync failed; the event will be retried", obs.KeyOutcome, OutcomeRetry, obs.KeyErr, err.Error())
		return Result{Slot: l.Slot, Changes: res.Changes}, err
	}
	o.Log.InfoContext(ctx, "DNS records follow the instance's state", obs.KeyOutcome, OutcomeSynced, "changes", res.Changes)
	return res, nil
}

// heldBy returns the lease instance holds (claimed, bound or draining), if any.
func heldBy(leases []lease.Lease, instance string) (lease.Lease, bool) {
	for _, l := range leases {
		if l.HeldBy(instance) {
			return l, true
		}
	}
	return lease.Lease{}, false
}
