// Package eventbridge is the EventBridge event envelope every slotkeeper trigger
// shares (lifecycle actions, instance state changes, the schedule, alarm state
// changes), and its strict decoding.
package eventbridge

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Envelope is the EventBridge envelope; Detail is decoded by whoever knows its type.
type Envelope struct {
	Version    string          `json:"version"`
	ID         string          `json:"id"`
	DetailType string          `json:"detail-type"`
	Source     string          `json:"source"`
	Account    string          `json:"account"`
	Time       string          `json:"time"`
	Region     string          `json:"region"`
	Resources  []string        `json:"resources"`
	Detail     json.RawMessage `json:"detail"`
}

// HasDetail reports whether the envelope carries a detail object at all.
func (e Envelope) HasDetail() bool { return len(e.Detail) > 0 && string(e.Detail) != "null" }

// ErrTrailingData means the payload held more than one JSON value.
var ErrTrailingData = errors.New("trailing data after the event")

// Decode decodes raw, which must be exactly one JSON value, into v.
func Decode(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return ErrTrailingData
	}
	return nil
}
