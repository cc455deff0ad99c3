package slotctl

import (
	"context"
	"fmt"
	"strconv"

	"github.com/slotkeeper/slotkeeper/shared/config"
	"github.com/slotkeeper/slotkeeper/shared/lease"
)

func historyCommand() Command {
	return Command{
		Name: "history", Args: "<slot>", NArgs: 1,
		Summary: "a slot's transitions and disk growths",
		Help: `Shows the slot's lease: state, version (the fencing token), holder; then its recent
transitions (who moved it from which state to which, when, and why; the lease item keeps
the last 50) and its disk growths (the last 20).`,
		Examples: []string{"slotctl history 1", "slotctl history 1 --json"},
		Needs:    []string{"CLUSTER", "TABLE", "SLOT_COUNT"},
		Run:      runHistory,
	}
}

// History is a slot's lease and its recorded history.
type History struct {
	Cluster    string `json:"cluster"`
	Slot       int    `json:"slot"`
	NodeID     int    `json:"node_id"`
	State      string `json:"state"`
	Version    int64  `json:"version"`
	Holder     string `json:"holder,omitempty"`
	LastHolder string `json:"last_holder,omitempty"`
	// VolumeID, ENIID and IP are the slot's resources as its lease records them.
	VolumeID    string       `json:"volume_id,omitempty"`
	ENIID       string       `json:"eni_id,omitempty"`
	IP          string       `json:"ip,omitempty"`
	Transitions []Transition `json:"transitions"`
	Growths     []Growth     `json:"growths"`
	// Pending is a growth that was decided and is not finished.
	Pending   *Growth `json:"pending_growth,omitempty"`
	NeverUsed bool    `json:"never_claimed,omitempty"`
}

// Transition is one entry of a slot's history (lease.Transition, in JSON).
type Transition struct {
	At       string `json:"at"`
	From     string `json:"from"`
	To       string `json:"to"`
	Version  int64  `json:"version"`
	Instance string `json:"instance,omitempty"`
	Actor    string `json:"actor,omitempty"`
	Reason   string `json:"reason"`
}

// Growth is one growth of a slot's volume, finished or pending.
type Growth struct {
	At          string  `json:"at"` // finished at; for a pending growth, decided at
	VolumeID    string  `json:"volume_id"`
	FromGiB     int32   `json:"from_gib"`
	ToGiB       int32   `json:"to_gib"`
	UsedPercent float64 `json:"used_percent"`
	Actor       string  `json:"actor,omitempty"`
	Reason      string  `json:"reason"`
	Attempts    int     `json:"attempts,omitempty"`   // pending only
	LastError   string  `json:"last_error,omitempty"` // pending only
}

// ParseSlot reads a slot number argument and checks it against the slot count.
func ParseSlot(arg string, cfg config.Config) (int, error) {
	s, err := strconv.Atoi(arg)
	if err != nil || s < 0 || s >= cfg.SlotCount {
		return 0, Usage(fmt.Sprintf("slots are numbered 0 to %d (SLOTKEEPER_SLOT_COUNT is %d)", cfg.SlotCount-1, cfg.SlotCount),
			"%q is not a slot of cluster %s", arg, cfg.Cluster)
	}
	return s, nil
}

func runHistory(ctx context.Context, r *Run) error {
	cfg := r.Env.Config
	s, err := ParseSlot(r.Args[0], cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	c, err := r.Env.Clients(ctx)
	if err != nil {
		return err
	}
	store := lease.NewStore(c.DynamoDB, cfg.Table, cfg.Cluster)
	l, g, err := store.LeaseAndGrowth(ctx, s)
	if err != nil {
		return awsError(err, "reading the lease table "+cfg.Table)
	}
	h := History{Cluster: cfg.Cluster, Slot: s, NodeID: cfg.NodeID(s), State: string(l.State), Version: l.Version,
		Holder: l.Holder, LastHolder: l.LastHolder, VolumeID: l.VolumeID, ENIID: l.ENIID, IP: l.IP,
		Transitions: []Transition{}, Growths: []Growth{}, NeverUsed: !l.Exists()}
	for _, t := range l.History {
		h.Transitions = append(h.Transitions, Transition{At: t.At, From: string(t.From), To: string(t.To), Version: t.Version,
			Instance: t.Instance, Actor: t.Actor, Reason: t.Reason})
	}
	for _, gr := range g.History {
		h.Growths = append(h.Growths, Growth{At: gr.At, VolumeID: gr.VolumeID, FromGiB: gr.FromGiB, ToGiB: gr.ToGiB,
			UsedPercent: gr.UsedPercent, Actor: gr.Actor, Reason: gr.Reason})
	}
	if p := g.Pending; p != nil {
		h.Pending = &Growth{At: p.Since, VolumeID: p.VolumeID, FromGiB: p.FromGiB, ToGiB: p.ToGiB, UsedPercent: p.UsedPercent,
			Actor: p.Actor, Reason: p.Reason, Attempts: p.Attempts, LastError: p.LastError}
	}
	if r.Out.JSON {
		return r.Out.Emit(h)
	}
	out := r.Out
	out.Printf("%s %d · node %d · %s at version %d", out.Paint("slot", Dim), s, h.NodeID, out.Paint(h.State, Bold), h.Version)
	if h.Holder != "" {
		out.Printf(" · holder %s", h.Holder)
	}
	if h.LastHolder != "" {
		out.Printf(" · last holder %s", h.LastHolder)
	}
	if h.VolumeID != "" || h.ENIID != "" {
		out.Printf("\nrecords volume %s · ENI %s · IP %s", dash(h.VolumeID), dash(h.ENIID), dash(h.IP))
	}
	out.Printf("\n\n")
	if h.NeverUsed {
		out.Printf("Slot %d has never been claimed: no instance has been its broker yet.\n", s)
		return nil
	}
	var rows [][]Cell
	for _, t := range h.Transitions {
		style := Plain
		if t.To == string(lease.Free) {
			style = Warn
		}
		rows = append(rows, []Cell{{Text: t.At}, {Text: fmt.Sprintf("%s → %s", t.From, t.To), Style: style},
			{Text: fmt.Sprint(t.Version)}, {Text: dash(t.Instance)}, {Text: dash(t.Actor)}, {Text: t.Reason}})
	}
	out.Table([]string{"TIME", "TRANSITION", "VERSION", "INSTANCE", "ACTOR", "REASON"}, rows)
	if len(h.Growths) > 0 || h.Pending != nil {
		out.Printf("\n")
		var grows [][]Cell
		for _, gr := range h.Growths {
			grows = append(grows, []Cell{{Text: gr.At}, {Text: gr.VolumeID}, {Text: fmt.Sprintf("%d → %d GiB", gr.FromGiB, gr.ToGiB)},
				{Text: fmt.Sprintf("%.1f%%", gr.UsedPercent)}, {Text: dash(gr.Actor)}, {Text: gr.Reason}})
		}
		if p := h.Pending; p != nil {
			grows = append(grows, []Cell{{Text: p.At, Style: Warn}, {Text: p.VolumeID}, {Text: fmt.Sprintf("%d → %d GiB", p.FromGiB, p.ToGiB), Style: Warn},
				{Text: fmt.Sprintf("%.1f%%", p.UsedPercent)}, {Text: "pending", Style: Warn}, {Text: fmt.Sprintf("%s (%d attempt(s); last error: %s)", p.Reason, p.Attempts, dash(p.LastError))}})
		}
		out.Table([]string{"GROWN AT", "VOLUME", "SIZE", "USED", "ACTOR", "REASON"}, grows)
	}
	return nil
}
