package slotctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/slotkeeper/slotkeeper/shared/awsapi"
)

// awsError wraps an AWS failure as ExitUnreachable with a hint that names the likely
// cause. what says what was being done ("reading the lease table"); it may be empty
// when err carries that context already.
func awsError(err error, what string) *Error {
	if what != "" {
		err = fmt.Errorf("%s: %w", what, err)
	}
	return &Error{Code: ExitUnreachable, Err: err, Hint: awsHint(err)}
}

// awsHint guesses, from an AWS SDK error, what the operator should check.
func awsHint(err error) string {
	msg := strings.ToLower(err.Error())
	code := awsapi.Code(err)
	var netErr net.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer in time: check the network (or AWS_ENDPOINT_URL / --endpoint-url), or raise --timeout"
	case errors.As(err, &dnsErr):
		return "the endpoint's host name does not resolve: check AWS_ENDPOINT_URL / --endpoint-url and the region"
	case strings.Contains(msg, "connection refused"), errors.As(err, &opErr):
		return "nothing answers at the AWS endpoint: check AWS_ENDPOINT_URL / --endpoint-url (is the emulator running?), proxies and the network"
	case strings.Contains(msg, "failed to retrieve credentials"), strings.Contains(msg, "no ec2 imds role"),
		strings.Contains(msg, "static credentials are empty"), strings.Contains(msg, "credential"):
		return "no usable AWS credentials: set AWS_PROFILE (after `aws sso login`), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
	case code == "AccessDenied", code == "AccessDeniedException", code == "UnauthorizedOperation",
		code == "AuthorizationError":
		return "the credentials are not allowed to do this: slotctl needs read access to EC2, Auto Scaling, DynamoDB and Route 53 (and autoscaling:TerminateInstanceInAutoScalingGroup for evict)"
	case code == "UnrecognizedClientException", code == "InvalidClientTokenId", code == "ExpiredToken",
		code == "ExpiredTokenException", code == "SignatureDoesNotMatch", code == "AuthFailure":
		return "AWS does not accept the credentials (expired or wrong account): refresh them, e.g. `aws sso login`"
	case code == "ResourceNotFoundException":
		return "the lease table does not exist in this account and region: check SLOTKEEPER_TABLE (--table) and AWS_REGION (--region)"
	case code == "NoSuchHostedZone":
		return "the hosted zone does not exist: check SLOTKEEPER_HOSTED_ZONE_ID (--hosted-zone-id)"
	case awsapi.IsThrottled(err):
		return "AWS is throttling this account: wait a little and retry"
	case errors.As(err, &netErr):
		return "the AWS endpoint could not be reached: check the network and AWS_ENDPOINT_URL / --endpoint-url"
	}
	return "see the error above; `aws sts get-caller-identity` checks that credentials and region work"
}

// kafkaError wraps a Kafka failure as ExitUnreachable with a hint.
func kafkaError(err error, what string) *Error {
	return &Error{Code: ExitUnreachable, Err: fmt.Errorf("%s: %w", what, err),
		Hint: "check SLOTKEEPER_KAFKA_BOOTSTRAP (--kafka-bootstrap), the TLS and SASL settings, and that this machine can reach the brokers"}
}
