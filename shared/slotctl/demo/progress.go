package demo

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/slotkeeper/slotkeeper/shared/slotctl"
)

// progress prints the story as it happens: a heading per step, a line per wait and a
// line per note. On a terminal a wait's line shows "…" while it runs and is rewritten
// with its outcome and duration; elsewhere (CI logs, --json's stderr) only the
// finished line is printed. Safe for concurrent use.
type progress struct {
	out      *slotctl.Output
	w        io.Writer
	terminal bool
	start    time.Time

	mu      sync.Mutex
	pending string // the running wait's line, on a terminal
}

func newProgress(out *slotctl.Output, start time.Time) *progress {
	return &progress{out: out, w: out.Human(), terminal: out.Colour(), start: start}
}

// stamp is the time since the demo started, as the timeline shows it.
func (p *progress) stamp() string {
	return fmt.Sprintf("%6.1fs", time.Since(p.start).Seconds())
}

// Step prints a step's heading.
func (p *progress) Step(title string) {
	p.print(fmt.Sprintf("\n%s", p.out.Paint(title, slotctl.Bold)))
}

// Note prints a line of what happened.
func (p *progress) Note(format string, args ...any) {
	p.print(fmt.Sprintf("%s  %s %s", p.out.Paint(p.stamp(), slotctl.Dim), p.out.Paint("·", slotctl.Dim), fmt.Sprintf(format, args...)))
}

// Wait runs fn as a wait described by what and prints its outcome and duration. A
// panic in fn (a setup step's Fatalf) passes through after the line is finished.
func (p *progress) Wait(what string, fn func() error) (err error) {
	began := time.Now()
	p.mu.Lock()
	if p.terminal {
		p.pending = fmt.Sprintf("%s  %s %s", p.out.Paint(p.stamp(), slotctl.Dim), p.out.Paint("…", slotctl.Warn), what)
		fmt.Fprint(p.w, p.pending)
	}
	p.mu.Unlock()
	finished := false
	defer func() {
		if !finished {
			p.done(what, began, fmt.Errorf("stopped"))
		}
	}()
	err = fn()
	finished = true
	p.done(what, began, err)
	return err
}

func (p *progress) done(what string, began time.Time, err error) {
	mark, style := "✓", slotctl.Good
	if err != nil {
		mark, style = "✗", slotctl.Bad
	}
	line := fmt.Sprintf("%s  %s %s %s", p.out.Paint(p.stamp(), slotctl.Dim), p.out.Paint(mark, style), what,
		p.out.Paint(fmt.Sprintf("(%s)", round(time.Since(began))), slotctl.Dim))
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.terminal && p.pending != "" {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
	p.pending = ""
	fmt.Fprintln(p.w, line)
}

// print writes a whole line, keeping a running wait's line last on a terminal.
func (p *progress) print(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.terminal && p.pending != "" {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
	fmt.Fprintln(p.w, line)
	if p.terminal && p.pending != "" {
		fmt.Fprint(p.w, p.pending)
	}
}

// round rounds a duration for people: milliseconds below a second, else tenths.
func round(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(100 * time.Millisecond).String()
}
