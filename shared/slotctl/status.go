package slotctl

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/slotkeeper/slotkeeper/shared/lease"
	"github.com/slotkeeper/slotkeeper/shared/slot"
)

func statusCommand() Command {
	return Command{
		Name:    "status",
		Summary: "the slot table and Kafka health",
		Help: `Shows every slot: its AZ, Kafka node id, lease state, holder, IP, data volume and size,
and DNS name; then Kafka's health (registered brokers, under-replicated and offline
partitions) when SLOTKEEPER_KAFKA_BOOTSTRAP is set, and whether the Route 53 records match
the slots when SLOTKEEPER_HOSTED_ZONE_ID is set.

The volume and ENI shown are the ones the slot's lease records, described by their ids.

Exit code 1 when something is wrong: a bound slot whose holder is not running or whose
broker is not registered, a holder whose user data refused to start Kafka (its
slotkeeper:refused tag says why), a recorded volume or ENI that is gone, not a
well-formed id, tagged for another slot, or (when SLOTKEEPER_SUBNETS is set) outside
the slot's AZ or subnet, a recorded volume in the error state, a claim older than
SLOTKEEPER_CLAIM_TTL, a DNS record that does not match, under-replicated or offline
partitions. Exit code 3 when AWS or Kafka cannot be
reached (the table is still printed if AWS answered).`,
		Examples: []string{"slotctl status", "slotctl status --json | jq '.slots[] | {slot, holder, state}'"},
		Needs:    []string{"CLUSTER", "TABLE", "SLOT_COUNT"},
		Run:      runStatus,
	}
}

func runStatus(ctx context.Context, r *Run) error {
	ctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	c, err := r.Env.Clients(ctx)
	if err != nil {
		return err
	}
	sv, err := Inspect(ctx, c, r.Env.Config, SurveyOptions{KnownSubnets: r.Env.Set["SUBNETS"]})
	if err != nil {
		return err
	}
	out := r.Out
	out.Printf("%s %s · %d slots · table %s\n\n", out.Paint("cluster", Dim), out.Paint(sv.Cluster, Bold), sv.SlotCount, sv.Table)
	out.Table(SlotHeaders, SlotCells(out, sv.Slots))
	if !out.JSON {
		WriteHealth(out, out.Human(), sv)
	}
	if err := out.Emit(sv); err != nil {
		return err
	}
	switch {
	case sv.Kafka != nil && sv.Kafka.Error != "":
		return Emitted(kafkaError(fmt.Errorf("%s", sv.Kafka.Error), "asking Kafka for its health"))
	case len(sv.Problems) > 0:
		return Emitted(Problem("'slotctl history <slot>' shows how a slot got there; the reconciler repairs drift every few minutes",
			"%d problem(s) found", len(sv.Problems)))
	}
	out.Printf("%s\n", out.Paint("No problems found.", Good))
	return nil
}

// SlotHeaders are the columns of the slot table.
var SlotHeaders = []string{"SLOT", "AZ", "NODE", "STATE", "HOLDER", "IP", "VOLUME", "SIZE", "DNS NAME"}

// SlotCells renders slot rows as table cells, coloured by health.
func SlotCells(out *Output, rows []SlotRow) [][]Cell {
	var cells [][]Cell
	for _, r := range rows {
		state := Cell{Text: r.State, Style: Good}
		switch {
		case len(r.Problems) > 0:
			state.Style = Bad
		case r.State == string(lease.Free):
			state.Style = Dim
		case r.State != string(lease.Bound):
			state.Style = Warn
		}
		holder := Cell{Text: dash(r.Holder)}
		if r.Holder != "" && r.HolderState != slot.Running {
			holder = Cell{Text: r.Holder + " (" + r.HolderState + ")", Style: Bad}
		}
		if r.Registered != nil && !*r.Registered && r.State == string(lease.Bound) {
			holder.Style = Bad
		}
		size := ""
		if r.SizeGiB > 0 {
			size = fmt.Sprintf("%d GiB", r.SizeGiB)
		}
		dnsName := Cell{Text: dash(r.DNSName)}
		if r.DNSName != "" && r.IP != "" && (len(r.DNSValues) != 1 || r.DNSValues[0] != r.IP) {
			dnsName = Cell{Text: r.DNSName + " → " + strings.Join(r.DNSValues, ",") + "?", Style: Bad}
			if len(r.DNSValues) == 0 {
				dnsName.Text = r.DNSName + " (missing)"
			}
		}
		cells = append(cells, []Cell{
			{Text: fmt.Sprint(r.Slot)}, {Text: dash(r.AZ)}, {Text: fmt.Sprint(r.NodeID)}, state, holder,
			{Text: dash(r.IP)}, {Text: dash(r.Volume)}, {Text: dash(size)}, dnsName,
		})
	}
	return cells
}

// WriteHealth writes the Kafka, DNS and problem lines under the slot table.
func WriteHealth(out *Output, w io.Writer, sv Survey) {
	fmt.Fprintln(w)
	switch k := sv.Kafka; {
	case k == nil:
		fmt.Fprintf(w, "%s  not checked (SLOTKEEPER_KAFKA_BOOTSTRAP is empty)\n", out.Paint("Kafka", Bold))
	case k.Error != "":
		fmt.Fprintf(w, "%s  %s\n", out.Paint("Kafka", Bold), out.Paint("unreachable: "+k.Error, Bad))
	default:
		style := Good
		if k.UnderReplicated > 0 || k.Offline > 0 {
			style = Bad
		}
		fmt.Fprintf(w, "%s  %d broker(s) registered %v · %d partitions · %s\n", out.Paint("Kafka", Bold),
			len(k.Brokers), k.Brokers, k.Partitions,
			out.Paint(fmt.Sprintf("%d under-replicated · %d offline", k.UnderReplicated, k.Offline), style))
	}
	if d := sv.DNS; d != nil {
		status := out.Paint("match the slots", Good)
		if len(d.Drift) > 0 {
			status = out.Paint(fmt.Sprintf("%d difference(s) from the slots", len(d.Drift)), Bad)
		}
		fmt.Fprintf(w, "%s    zone %s · %d record(s) under %s %s · bootstrap %v\n", out.Paint("DNS", Bold),
			d.HostedZoneID, d.Records, d.Name, status, d.Bootstrap)
	}
	if len(sv.Problems) > 0 {
		fmt.Fprintf(w, "\n%s\n", out.Paint("Problems:", Bad))
		for _, p := range sv.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
