// Package slotctl is the operator's command-line tool for a slotkeeper cluster. It reads
// the same SLOTKEEPER_* configuration as the functions (or the equivalent flags) and
// works against real AWS or whatever AWS_ENDPOINT_URL names:
//
//	slotctl status           the slot table and Kafka health
//	slotctl history <slot>   a slot's transitions and disk growths
//	slotctl preflight        checks before going live
//	slotctl evict <slot>     replace a slot's broker on purpose, through the ASG
//	slotctl reset <slot>     give a slot whose recorded volume (or ENI) is gone or unusable a new one
//	slotctl adopt <id>       make a running broker a slot's holder, in place
//	slotctl roll             replace every broker, one at a time, safely
//	slotctl demo             the whole lifecycle on this machine (package demo)
//
// Every command prints for people by default (colour only on a terminal) and, with
// --json, exactly one JSON document on stdout, errors included. The exit code tells a
// script what happened (see the Exit* constants); every error comes with a hint.
package slotctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// Exit codes, a documented contract.
const (
	// ExitOK: the command did what was asked and found nothing wrong.
	ExitOK = 0
	// ExitProblem: the command ran and found a problem (a slot or Kafka problem in
	// status, a failed check in preflight, a wrong end state in demo).
	ExitProblem = 1
	// ExitUsage: bad command, flag, argument or configuration; nothing was done.
	ExitUsage = 2
	// ExitUnreachable: AWS or Kafka could not be reached or refused a request.
	ExitUnreachable = 3
	// ExitRefused: evict, reset, adopt or roll declined to act (a check failed), or a
	// dry run of evict, reset or adopt (without --yes); nothing was changed.
	ExitRefused = 4
)

// Error is a failure with the exit code it maps to and a hint for the operator.
type Error struct {
	Code int
	Err  error
	Hint string

	emitted bool // the run's JSON document has been written already (see Emitted)
}

// Error implements error.
func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Usage returns a usage error (ExitUsage) with a hint.
func Usage(hint, format string, args ...any) *Error {
	return &Error{Code: ExitUsage, Err: fmt.Errorf(format, args...), Hint: hint}
}

// Problem returns an error meaning "ran, and found something wrong" (ExitProblem).
func Problem(hint, format string, args ...any) *Error {
	return &Error{Code: ExitProblem, Err: fmt.Errorf(format, args...), Hint: hint}
}

// Refused returns an error meaning "declined to act" (ExitRefused).
func Refused(hint, format string, args ...any) *Error {
	return &Error{Code: ExitRefused, Err: fmt.Errorf(format, args...), Hint: hint}
}

// IO is what one run of slotctl gets from its process.
type IO struct {
	Stdout, Stderr io.Writer
	// Getenv reads the environment (os.Getenv).
	Getenv func(string) string
	// Terminal reports whether Stdout is a terminal (colour is used only then).
	Terminal bool
	// Clients, when set, replaces the AWS clients built from the environment (tests).
	Clients *Clients
}

// Command is one slotctl subcommand.
type Command struct {
	// Name is the subcommand's name; Args describes its positional arguments.
	Name, Args string
	// Summary is one line for the command list; Help is the full description.
	Summary, Help string
	// Examples are command lines shown under Help.
	Examples []string
	// Needs lists the configuration variables (without SLOTKEEPER_) that must be set.
	// Nil means the command reads no slotkeeper configuration at all.
	Needs []string
	// NArgs is the exact number of positional arguments.
	NArgs int
	// Flags registers the command's own flags.
	Flags func(fs *flag.FlagSet)
	// Run runs the command.
	Run func(ctx context.Context, r *Run) error
}

// Run is one run of a command: its arguments, configuration, clients and output.
type Run struct {
	Args []string
	// Env holds the configuration as loaded (valid only when the command has Needs).
	Env *Env
	// Out renders results.
	Out *Output
	// Timeout bounds the command's AWS and Kafka calls (--timeout).
	Timeout time.Duration
}

// Commands returns slotctl's own commands; Main adds the extra ones it is given.
func Commands() []Command {
	return []Command{statusCommand(), historyCommand(), preflightCommand(), evictCommand(), resetCommand(), adoptCommand(), rollCommand()}
}

// globals are the flags every command accepts.
type globals struct {
	json, noColor, help bool
	timeout             time.Duration
	region, endpoint    string
	config              map[string]*string // SLOTKEEPER_ variable (without prefix) -> flag value
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.BoolVar(&g.json, "json", false, "print one JSON document on stdout (errors included)")
	fs.BoolVar(&g.noColor, "no-color", false, "never colour the output (also: NO_COLOR set)")
	fs.BoolVar(&g.help, "help", false, "show help")
	fs.BoolVar(&g.help, "h", false, "show help")
	fs.DurationVar(&g.timeout, "timeout", 30*time.Second, "bound on the command's AWS and Kafka calls")
	fs.StringVar(&g.region, "region", "", "AWS region (default: AWS_REGION / the shared config)")
	fs.StringVar(&g.endpoint, "endpoint-url", "", "AWS endpoint (default: AWS_ENDPOINT_URL), e.g. a local emulator")
	g.config = registerConfigFlags(fs)
}

// Main runs slotctl with args (without the program name) and returns the exit code.
// extra are further commands (the demo), wired by the binary.
func Main(ctx context.Context, args []string, pio IO, extra ...Command) int {
	if pio.Getenv == nil {
		pio.Getenv = os.Getenv
	}
	cmds := append(Commands(), extra...)
	var g globals
	probe := flag.NewFlagSet("slotctl", flag.ContinueOnError)
	g.register(probe)
	name, rest := splitCommand(probe, args)
	// Flags are parsed with the command's own set; without a command, with the globals.
	var cmd Command
	switch i := slices.IndexFunc(cmds, func(c Command) bool { return c.Name == name }); {
	case i >= 0:
		cmd = cmds[i]
	case name == "" || name == "help":
		cmd = Command{Name: "help", NArgs: -1}
	}
	fs := flag.NewFlagSet("slotctl "+cmd.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs)
	if cmd.Flags != nil {
		cmd.Flags(fs)
	}
	pos, err := parseInterleaved(fs, rest)
	if err != nil {
		// Parsing stopped at the bad flag: --json or --no-color after it still count.
		g.json = g.json || hasFlag(args, "json")
		g.noColor = g.noColor || hasFlag(args, "no-color")
	}
	out := newOutput(pio, &g)
	switch {
	case err != nil && cmd.Name == "":
		return out.fail(Usage("the commands are: "+commandNames(cmds), "unknown command %q (and %v)", name, err))
	case err != nil:
		return out.fail(Usage("run 'slotctl help "+cmd.Name+"' for its flags", "%v", err))
	case cmd.Name == "":
		return out.fail(Usage("the commands are: "+commandNames(cmds), "unknown command %q", name))
	case cmd.Name == "help":
		topic := ""
		if len(pos) > 0 {
			topic = pos[0]
		}
		return help(out, cmds, topic)
	case g.help:
		return help(out, cmds, cmd.Name)
	case len(pos) != cmd.NArgs:
		return out.fail(Usage("usage: slotctl "+strings.TrimSpace(cmd.Name+" "+cmd.Args),
			"%s takes %d argument(s), got %d: %q", cmd.Name, cmd.NArgs, len(pos), pos))
	}

	run := &Run{Args: pos, Out: out, Timeout: g.timeout}
	if cmd.Needs != nil {
		env, err := loadEnv(pio, &g, cmd.Needs)
		if err != nil {
			return out.fail(err)
		}
		run.Env = env
		defer env.Close()
	}
	if err := cmd.Run(ctx, run); err != nil {
		return out.fail(err)
	}
	return ExitOK
}

// splitCommand finds the command word: the first argument that is neither a flag nor
// the value of a flag of fs that takes one. It returns it and the other arguments.
// Unknown flags before the command are taken to take no value.
func splitCommand(fs *flag.FlagSet, args []string) (string, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			if i+1 < len(args) {
				return args[i+1], append(slices.Clone(args[:i+1]), args[i+2:]...)
			}
			return "", args
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			return a, append(slices.Clone(args[:i]), args[i+1:]...)
		}
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if f := fs.Lookup(name); f != nil {
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
				i++ // the flag's value
			}
		}
	}
	return "", args
}

// parseInterleaved parses flags that may come before, between and after positional
// arguments, and returns the positional ones. "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// hasFlag reports whether args hold the boolean flag name (-name or --name).
func hasFlag(args []string, name string) bool {
	return slices.Contains(args, "-"+name) || slices.Contains(args, "--"+name)
}

func commandNames(cmds []Command) string {
	names := make([]string, len(cmds))
	for i, c := range cmds {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

// help prints the overview, one command's help, or the configuration flags.
func help(out *Output, cmds []Command, topic string) int {
	w := out.stdout
	switch topic {
	case "":
		fmt.Fprintln(w, "slotctl: operate a slotkeeper cluster (self-healing Kafka brokers on an Auto Scaling group).")
		fmt.Fprintln(w, "\nUsage: slotctl <command> [flags] [arguments]\n\nCommands:")
		for _, c := range cmds {
			fmt.Fprintf(w, "  %-18s %s\n", strings.TrimSpace(c.Name+" "+c.Args), c.Summary)
		}
		fmt.Fprint(w, globalHelp)
		return ExitOK
	case "config":
		fmt.Fprintln(w, "Configuration: every SLOTKEEPER_<NAME> variable the functions read can be given as --<name>")
		fmt.Fprintln(w, "(lower case, '-' for '_'); a flag wins over the variable.")
		fmt.Fprintln(w)
		for _, f := range configFlags() {
			fmt.Fprintf(w, "  --%-24s %s\n", f.flag, f.v.Meaning)
		}
		return ExitOK
	}
	i := slices.IndexFunc(cmds, func(c Command) bool { return c.Name == topic })
	if i < 0 {
		return out.fail(Usage("help topics: config, "+commandNames(cmds), "no help for %q", topic))
	}
	c := cmds[i]
	fmt.Fprintf(w, "Usage: slotctl %s [flags]\n\n%s\n", strings.TrimSpace(c.Name+" "+c.Args), c.Help)
	if len(c.Examples) > 0 {
		fmt.Fprintln(w, "\nExamples:")
		for _, e := range c.Examples {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
	if len(c.Needs) > 0 {
		fmt.Fprintf(w, "\nNeeds: %s (or the flags; see 'slotctl help config').\n", needList(c.Needs))
	}
	if c.Flags != nil {
		fs := flag.NewFlagSet(c.Name, flag.ContinueOnError)
		c.Flags(fs)
		fmt.Fprintln(w, "\nFlags:")
		fs.VisitAll(func(f *flag.Flag) { fmt.Fprintf(w, "  --%-16s %s\n", f.Name, f.Usage) })
	}
	fmt.Fprint(w, globalHelp)
	return ExitOK
}

const globalHelp = `
Global flags (before or after the command):
  --json               one JSON document on stdout, errors included
  --no-color           no colour (colour is only ever used on a terminal; NO_COLOR also works)
  --timeout 30s        bound on the command's AWS and Kafka calls
  --region R           AWS region (else AWS_REGION or the shared config)
  --endpoint-url URL   AWS endpoint (else AWS_ENDPOINT_URL), e.g. a local emulator
  --<name>             any SLOTKEEPER_<NAME> configuration variable; 'slotctl help config' lists them

Exit codes: 0 ok · 1 problem found (or a roll interrupted or timed out) · 2 usage or
configuration error · 3 AWS or Kafka unreachable or refusing · 4 refused to act: a check
failed, or a dry run of evict, reset or adopt (nothing changed).
`

func needList(needs []string) string {
	var parts []string
	for _, n := range needs {
		parts = append(parts, "SLOTKEEPER_"+n)
	}
	return strings.Join(parts, ", ")
}

// asError turns any error into an *Error; errors that are not one already are taken
// for AWS or Kafka failures (ExitUnreachable), with a hint from their text.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return awsError(err, "")
}
