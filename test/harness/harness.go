// Package harness runs integration tests against AWS emulated by moto: it wraps
// package test/emulator (moto behind a counting, fault-injecting proxy that answers
// the calls moto lacks and models the windows it skips) for tests.
//
// Start starts an emulator for one test and stops it when the test ends; the world
// builders fail the test instead of returning an error. Everything else is the
// emulator's own API, promoted through the embedded *emulator.Emulator: code under
// test talks to the proxy (h.URL, AWSConfig, Env), set-up and assertions talk to moto
// directly (h.MotoURL, DirectConfig), and Calls, Inject, Override, Completions,
// SetInstanceState and the rest work as documented there.
//
// Every test that started a harness fails if the code under test called a delete of a
// volume or a network interface through the proxy (emulator.Emulator.Forbidden):
// slotkeeper never deletes a broker's data.
package harness

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/slotkeeper/slotkeeper/test/emulator"
)

// The emulator's types and constants, under the names the tests have always used.
type (
	// Fault describes calls to disturb and how (emulator.Fault).
	Fault = emulator.Fault
	// FaultKind is what an injected fault does (emulator.FaultKind).
	FaultKind = emulator.FaultKind
	// Override rewrites moto's answers to one action (emulator.Override).
	Override = emulator.Override
	// LifecycleCall is a recorded lifecycle call (emulator.LifecycleCall).
	LifecycleCall = emulator.LifecycleCall
	// GroupInstance is a modelled instance of an Auto Scaling group.
	GroupInstance = emulator.GroupInstance
	// World is the network and lease table a cluster lives in (emulator.World).
	World = emulator.World
	// Subnet is one subnet of a World.
	Subnet = emulator.Subnet
)

// The fault kinds (see emulator.FaultKind).
const (
	Throttle     = emulator.Throttle
	ServerError  = emulator.ServerError
	Latency      = emulator.Latency
	Crash        = emulator.Crash
	LostResponse = emulator.LostResponse
)

// Harness is one emulator for one test.
type Harness struct {
	*emulator.Emulator

	// forbiddenSeen is how many forbidden calls the test declared deliberate: the
	// end-of-test check ignores that many (only the harness's own tests set it).
	forbiddenSeen int
}

// Start starts an emulator (moto and the proxy) and registers t.Cleanup to stop it.
//
// When moto_server cannot be found (see emulator.Start for where it looks) the test is
// skipped, except under CI=true, where a test that silently skips would hide a broken
// setup: there the test fails.
func Start(t testing.TB) *Harness {
	t.Helper()
	e, err := emulator.Start()
	if errors.Is(err, emulator.ErrNoMoto) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v", err)
		}
		t.Skipf("skipping integration test: %v", err)
	}
	if err != nil {
		t.Fatalf("%v", err)
	}
	h := &Harness{Emulator: e}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("moto output (last 64 KiB):\n%s", e.MotoOutput())
		}
		if err := e.Close(); err != nil {
			t.Errorf("stopping the emulator: %v", err)
		}
	})
	t.Cleanup(func() {
		if calls := h.Forbidden(); len(calls) > h.forbiddenSeen {
			t.Errorf("code under test called %v through the proxy: slotkeeper must never delete a broker's volume or ENI",
				strings.Join(calls[h.forbiddenSeen:], ", "))
		}
	})
	return h
}

// NewWorld is emulator.Emulator.NewWorld for a test: it fails the test on error.
func (h *Harness) NewWorld(t testing.TB, table string) *World {
	t.Helper()
	w, err := h.Emulator.NewWorld(context.Background(), table)
	if err != nil {
		t.Fatalf("building the world: %v", err)
	}
	return w
}

// RunInstance launches one t3.large instance of the world's AMI and security group in
// subnetID, directly at moto, and returns its id (emulator.Emulator.RunInstance). moto
// reports it "running" at once.
func (h *Harness) RunInstance(t testing.TB, w *World, subnetID string) string {
	t.Helper()
	return h.RunInstanceTagged(t, w, subnetID, nil)
}

// RunInstanceTagged is RunInstance with instance tags set at launch, for example
// aws:autoscaling:groupName.
func (h *Harness) RunInstanceTagged(t testing.TB, w *World, subnetID string, tags map[string]string) string {
	t.Helper()
	id, err := h.Emulator.RunInstanceTagged(context.Background(), w, subnetID, tags)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return id
}

// TerminateInstance terminates instance id directly at moto (see
// emulator.Emulator.TerminateInstance for what moto does then).
func (h *Harness) TerminateInstance(t testing.TB, id string) {
	t.Helper()
	if err := h.Emulator.TerminateInstance(context.Background(), id); err != nil {
		t.Fatalf("%v", err)
	}
}
