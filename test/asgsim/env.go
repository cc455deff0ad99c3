package asgsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/slotkeeper/slotkeeper/test/emulator"
)

// Env is one worker's AWS: an emulator (moto behind the proxy) with the simulator's
// observers installed, used by one run at a time. Between runs moto is reset; every
// RestartEvery runs the emulator is started afresh, so that neither moto nor the
// proxy's records grow without bound.
type Env struct {
	// E is the current emulator.
	E *emulator.Emulator
	// RestartEvery is how many runs an emulator serves (0: 20).
	RestartEvery int

	runs int
	n    int
	cur  atomic.Pointer[run]
}

// ErrNoMoto means moto_server was not found (emulator.ErrNoMoto).
var ErrNoMoto = emulator.ErrNoMoto

// NewEnv starts an emulator with the observers installed.
func NewEnv() (*Env, error) {
	env := &Env{}
	if err := env.start(); err != nil {
		return nil, err
	}
	return env, nil
}

func (env *Env) start() error {
	e, err := emulator.Start()
	if err != nil {
		return err
	}
	env.E = e
	env.install()
	env.runs = 0
	return nil
}

// Close stops the emulator.
func (env *Env) Close() error {
	if env.E == nil {
		return nil
	}
	return env.E.Close()
}

// fresh makes the environment ready for a new run and returns a cluster name that
// is new to this emulator (client tokens and lifecycle actions are keyed by names).
func (env *Env) fresh(ctx context.Context) (string, error) {
	every := env.RestartEvery
	if every <= 0 {
		every = 20
	}
	if env.runs >= every {
		if err := env.E.Close(); err != nil {
			return "", fmt.Errorf("stopping the emulator: %w", err)
		}
		if err := env.start(); err != nil {
			return "", err
		}
	} else if env.runs > 0 {
		if err := resetMoto(ctx, env.E.MotoURL); err != nil {
			return "", err
		}
	}
	env.runs++
	env.n++
	env.E.ClearFaults()
	env.E.ResetCounts()
	return fmt.Sprintf("sim%d", env.n), nil
}

// resetMoto forgets every resource moto holds.
func resetMoto(ctx context.Context, motoURL string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, motoURL+"/moto-api/reset", nil)
	if err != nil {
		return fmt.Errorf("resetting moto: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("resetting moto: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode/100 != 2 {
		return errors.New("resetting moto: " + resp.Status)
	}
	return nil
}

// install puts the simulator's observers on the proxy (before its first call, as
// Override requires). They act for the run in progress, if any.
func (env *Env) install() {
	for _, action := range []string{"SendCommand", "GetCommandInvocation", "DetachVolume", "AttachVolume", "AttachNetworkInterface"} {
		env.E.Override(emulator.Override{Action: action, Rewrite: func(req, resp []byte) []byte {
			r := env.cur.Load()
			if r == nil {
				return resp
			}
			return r.observe(action, req, resp)
		}})
	}
}
