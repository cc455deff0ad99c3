package demo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/slotkeeper/slotkeeper/shared/slotctl"
	"github.com/slotkeeper/slotkeeper/test/realkafka"
)

// Command is `slotctl demo`, what `make demo` runs.
func Command() slotctl.Command {
	var opt Options
	return slotctl.Command{
		Name:    "demo",
		Summary: "the whole lifecycle on this machine (moto + kfake), about a minute",
		Help: `Runs slotkeeper's real functions, built for this machine, the way Lambda runs them (the
Lambda Runtime API, configuration by environment variables only), against moto (the AWS
emulator of the tests, from .venv) and an in-process Kafka of three brokers, and tells one
story: three brokers launch together; broker 1 dies and the reconciler frees its slot;
the replacement becomes broker 1 with the same IP and volume; a planned scale-in waits
until Kafka can lose the broker; the group scales back out; broker 2's disk grows;
'slotctl roll' replaces every broker, one at a time, the quorum leader last, with its
progress lines; DNS follows. It prints a line per wait, then the timeline (every event
and invocation, with its AWS calls) and the final slot table, and checks the story's
claims.

With --kafka real the brokers are Apache Kafka itself (three KRaft nodes on loopback,
fetched by 'make kafka-runtime'; needs Java 17+): a crash is SIGKILL to the broker's
process, the stop command the terminate function sends over SSM is SIGTERM to it (a
controlled shutdown), and the replacement broker 1 starts on its data directory once
the scale-in has been held.

Needs Go (the functions are built) and moto (run 'make venv' once). No AWS account.
Exit code 0 when every claim holds, 1 when one does not, 3 when the demo cannot run.`,
		Examples: []string{
			"slotctl demo",
			"slotctl demo --json > demo.json          # one JSON document; progress on stderr",
			"slotctl demo --logs /tmp/demo-logs",
		},
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&opt.LogDir, "logs", "", "directory for the functions' logs (default: a new temporary directory, kept)")
			fs.StringVar(&opt.Root, "repo", "", "slotkeeper checkout to build the functions from (default: found from the working directory)")
			fs.StringVar(&opt.Kafka, "kafka", KafkaFake, "the brokers' Kafka: kfake (in-process) or real (Apache Kafka from 'make kafka-runtime': SIGTERM for the stop command, SIGKILL for a crash)")
		},
		Run: func(ctx context.Context, r *slotctl.Run) error {
			o := opt
			o.Out = r.Out
			return runCommand(ctx, o)
		},
	}
}

func runCommand(ctx context.Context, opt Options) error {
	out := opt.Out
	rep, err := Run(ctx, opt)
	if err != nil {
		hint := "the function logs are in " + rep.LogDir
		code := slotctl.ExitUnreachable
		if errors.Is(err, ErrNoEmulator) {
			hint = "run 'make venv' (it installs moto into .venv), or set SLOTKEEPER_MOTO_SERVER to a moto_server executable"
		}
		if errors.Is(err, realkafka.ErrNoRuntime) {
			hint = "run 'make kafka-runtime' (it fetches Apache Kafka from Maven Central; needs java and mvn), or use --kafka kfake"
		}
		if len(rep.Timeline) > 0 && !out.JSON {
			fmt.Fprintln(out.Human())
			WriteTimeline(out, out.Human(), rep.Timeline)
		}
		return &slotctl.Error{Code: code, Err: fmt.Errorf("the demo could not finish: %w", err), Hint: hint}
	}
	if !out.JSON {
		w := out.Human()
		fmt.Fprintf(w, "\n%s\n", out.Paint("Timeline", slotctl.Bold))
		WriteTimeline(out, w, rep.Timeline)
		fmt.Fprintf(w, "\n%s\n", out.Paint("Slots", slotctl.Bold))
		out.WriteTable(w, slotctl.SlotHeaders, slotctl.SlotCells(out, rep.Final.Slots))
		slotctl.WriteHealth(out, w, rep.Final)
		fmt.Fprintf(w, "\n%s\n", out.Paint("The story's claims, checked against the final state", slotctl.Bold))
		for _, c := range rep.Checks {
			mark, style := "✓", slotctl.Good
			if !c.OK {
				mark, style = "✗", slotctl.Bad
			}
			fmt.Fprintf(w, "  %s %s %s\n", out.Paint(mark, style), c.Claim, out.Paint("("+c.Detail+")", slotctl.Dim))
		}
		fmt.Fprintf(w, "\nDone in %.1fs on %s. Function logs: %s\n", float64(rep.DurationMS)/1000, rep.Platform, rep.LogDir)
	}
	if err := out.Emit(rep); err != nil {
		return err
	}
	if !rep.Passed {
		return slotctl.Emitted(slotctl.Problem("the function logs are in "+rep.LogDir, "the demo ended in a wrong state: %s", failed(rep.Checks)))
	}
	return nil
}

func failed(checks []Check) string {
	var names []string
	for _, c := range checks {
		if !c.OK {
			names = append(names, c.Claim)
		}
	}
	return strings.Join(names, "; ")
}

// WriteTimeline writes the timeline table.
func WriteTimeline(out *slotctl.Output, w io.Writer, events []Event) {
	var rows [][]slotctl.Cell
	for _, e := range events {
		fn, calls, dur := slotctl.Cell{Text: "-", Style: slotctl.Dim}, slotctl.Cell{Text: ""}, slotctl.Cell{Text: ""}
		outcome := slotctl.Cell{Text: e.Outcome}
		if e.Function != "" {
			fn = slotctl.Cell{Text: e.Function}
			calls.Text = fmt.Sprintf("%d", e.Calls)
			if e.Writes > 0 {
				calls.Text += fmt.Sprintf(" (%d writes)", e.Writes)
			}
			dur.Text = fmt.Sprintf("%d ms", e.DurationMS)
			if e.ColdStart {
				dur.Text += " cold"
			}
			outcome.Style = slotctl.Good
			switch {
			case strings.HasPrefix(e.Outcome, "error"):
				outcome.Style = slotctl.Bad
			case strings.HasPrefix(e.Outcome, "ignored"):
				outcome.Style = slotctl.Dim
			}
		} else {
			outcome.Style = slotctl.Warn
		}
		rows = append(rows, []slotctl.Cell{{Text: fmt.Sprintf("%6.1fs", float64(e.AtMS)/1000), Style: slotctl.Dim},
			{Text: e.Event}, fn, outcome, calls, dur})
	}
	out.WriteTable(w, []string{"TIME", "EVENT", "FUNCTION", "OUTCOME", "AWS CALLS", "DURATION"}, rows)
}

var (
	instancePrefix = regexp.MustCompile(`^instance i-[0-9a-f]+ `)
	clusterSuffix  = regexp.MustCompile(` of cluster [a-zA-Z0-9-]+$`)
)

// Summarize renders a function's response as a timeline outcome.
func Summarize(fn string, r map[string]any) string {
	outcome, _ := r["outcome"].(string)
	parts := []string{outcome}
	slot := -1
	if v, ok := r["slot"].(float64); ok {
		slot = int(v)
	}
	reason, _ := r["reason"].(string)
	switch fn {
	case "launch":
		if slot >= 0 {
			parts = append(parts, fmt.Sprintf("slot %d", slot))
		}
		if outcome != "continue" && reason != "" {
			parts = append(parts, shorten(reason, 60))
		}
	case "terminate":
		if slot >= 0 {
			parts = append(parts, fmt.Sprintf("slot %d", slot))
		}
		if r["planned"] == true {
			parts = append(parts, "planned")
		} else if outcome == "released" {
			parts = append(parts, "unplanned")
		}
		if n := num(r["safety_checks"]); n > 0 {
			parts = append(parts, fmt.Sprintf("%d safety checks", int(n)))
		}
		if r["forced"] == true {
			parts = append(parts, "FORCED")
		}
	case "reconcile":
		var released []string
		for _, s := range list(r["released"]) {
			released = append(released, fmt.Sprintf("%d", int(num(s))))
		}
		if len(released) > 0 {
			parts = append(parts, "released slot "+strings.Join(released, ", "))
		}
		if m, ok := r["repairs"].(map[string]any); ok {
			var names []string
			for k := range m {
				names = append(names, k)
			}
			slices.Sort(names)
			for _, k := range names {
				if n := num(m[k]); n > 0 {
					parts = append(parts, fmt.Sprintf("%s: %d repaired", k, int(n)))
				}
			}
		}
		if len(parts) == 1 && outcome == "reconciled" {
			parts = append(parts, "nothing to repair")
		}
	case "grow":
		if slot >= 0 {
			parts = append(parts, fmt.Sprintf("slot %d", slot))
		}
		if from, to := num(r["from_gib"]), num(r["to_gib"]); to > 0 {
			parts = append(parts, fmt.Sprintf("%d → %d GiB", int(from), int(to)))
		}
	case "dns":
		if slot >= 0 {
			parts = append(parts, fmt.Sprintf("slot %d", slot))
		}
		if outcome == "synced" {
			parts = append(parts, fmt.Sprintf("%d record change(s)", int(num(r["changes"]))))
		} else if reason != "" {
			// "instance i-0abc holds no slot of cluster demo": the row names both already.
			reason = instancePrefix.ReplaceAllString(reason, "")
			reason = clusterSuffix.ReplaceAllString(reason, "")
			parts = append(parts, shorten(reason, 60))
		}
	}
	return strings.Join(parts, " · ")
}
