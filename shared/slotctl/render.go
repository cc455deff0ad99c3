package slotctl

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Style is how a piece of text is coloured on a terminal.
type Style int

// Styles.
const (
	Plain Style = iota
	Good        // green: as it should be
	Warn        // yellow: worth a look
	Bad         // red: a problem
	Dim         // grey: secondary
	Bold
)

var ansi = map[Style]string{Good: "\x1b[32m", Warn: "\x1b[33m", Bad: "\x1b[31m", Dim: "\x1b[2m", Bold: "\x1b[1m"}

// Cell is one table cell.
type Cell struct {
	Text  string
	Style Style
}

// Output renders a command's results: for people on stdout (coloured only on a
// terminal), or, with --json, as one JSON document on stdout. Build it with NewOutput.
type Output struct {
	stdout, stderr io.Writer
	// JSON is true with --json: only Emit writes to stdout.
	JSON   bool
	colour bool
}

// NewOutput returns an Output writing to stdout and stderr; colour is used only when
// colour is true (a terminal, and not turned off).
func NewOutput(stdout, stderr io.Writer, jsonMode, colour bool) *Output {
	return &Output{stdout: stdout, stderr: stderr, JSON: jsonMode, colour: colour && !jsonMode}
}

func newOutput(pio IO, g *globals) *Output {
	colour := pio.Terminal && !g.noColor && pio.Getenv("NO_COLOR") == "" && pio.Getenv("TERM") != "dumb"
	return NewOutput(pio.Stdout, pio.Stderr, g.json, colour)
}

// Colour reports whether the output is coloured.
func (o *Output) Colour() bool { return o.colour }

// Paint returns s in style st when the output is coloured, else s.
func (o *Output) Paint(s string, st Style) string {
	if !o.colour || st == Plain {
		return s
	}
	return ansi[st] + s + "\x1b[0m"
}

// Human is where text for people goes: stdout, or stderr with --json (progress
// lines stay visible without spoiling the JSON document).
func (o *Output) Human() io.Writer {
	if o.JSON {
		return o.stderr
	}
	return o.stdout
}

// Printf writes text for people to stdout; nothing with --json.
func (o *Output) Printf(format string, args ...any) {
	if !o.JSON {
		fmt.Fprintf(o.stdout, format, args...)
	}
}

// Emit writes v as the JSON document of the run (with --json only).
func (o *Output) Emit(v any) error {
	if !o.JSON {
		return nil
	}
	enc := json.NewEncoder(o.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("writing JSON: %w", err)
	}
	return nil
}

// Table writes a table for people (nothing with --json): a header row, then rows,
// columns padded to their widest cell, two spaces apart.
func (o *Output) Table(headers []string, rows [][]Cell) {
	if o.JSON {
		return
	}
	o.WriteTable(o.stdout, headers, rows)
}

// WriteTable writes a table to w (see Table).
func (o *Output) WriteTable(w io.Writer, headers []string, rows [][]Cell) {
	widths := make([]int, len(headers))
	for i, h := range headers {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		for i, c := range r {
			if i < len(widths) {
				widths[i] = max(widths[i], utf8.RuneCountInString(c.Text))
			}
		}
	}
	line := func(cells []Cell) {
		var b strings.Builder
		for i, c := range cells {
			b.WriteString(o.Paint(c.Text, c.Style))
			if i < len(cells)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c.Text)+2))
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	head := make([]Cell, len(headers))
	for i, h := range headers {
		head[i] = Cell{Text: h, Style: Bold}
	}
	line(head)
	for _, r := range rows {
		line(r)
	}
}

// errorDoc is the JSON document of a failed run.
type errorDoc struct {
	Error    string `json:"error"`
	Hint     string `json:"hint,omitempty"`
	ExitCode int    `json:"exit_code"`
}

// fail reports err (with its hint) and returns its exit code. With --json the report
// is the run's JSON document, unless the command has emitted its own already (a
// problem found: the document says what).
func (o *Output) fail(err error) int {
	e := asError(err)
	if o.JSON {
		if !e.emitted {
			_ = o.Emit(errorDoc{Error: e.Error(), Hint: e.Hint, ExitCode: e.Code})
		}
		return e.Code
	}
	fmt.Fprintf(o.stderr, "%s %s\n", o.Paint("slotctl:", Bad), e.Error())
	if e.Hint != "" {
		fmt.Fprintf(o.stderr, "  %s %s\n", o.Paint("hint:", Warn), e.Hint)
	}
	return e.Code
}

// Emitted marks err as reported in the run's JSON document already.
func Emitted(err *Error) *Error {
	err.emitted = true
	return err
}
