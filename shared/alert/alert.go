// Package alert sends operator alerts: the events an on-call engineer must hear of
// (growth stopped at the size cap, an unsafe termination forced, an abandoned launch).
// Every alert is also logged at error level; with no topic configured, the log and
// the caller's metric are the whole signal.
package alert

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// Notifier publishes alerts to an SNS topic.
type Notifier struct {
	SNS      awsapi.SNS
	TopicARN string // empty: log only
	Cluster  string
}

// Send logs the alert and publishes it. A failed publish is returned for the caller
// to log: an alert must not make the action it reports on fail.
func (n *Notifier) Send(ctx context.Context, log *slog.Logger, subject, message string) error {
	log.ErrorContext(ctx, "ALERT: "+subject, "alert", message)
	if n == nil || n.TopicARN == "" {
		return nil
	}
	_, err := n.SNS.Publish(ctx, &sns.PublishInput{
		TopicArn: aws.String(n.TopicARN),
		Subject:  aws.String(truncate(fmt.Sprintf("slotkeeper %s: %s", n.Cluster, subject), 100)),
		Message:  aws.String(message),
	})
	if err != nil {
		return fmt.Errorf("publishing alert %q to %s: %w", subject, n.TopicARN, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
